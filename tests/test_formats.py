import struct

from lmforge.formats import bit_pattern, number_formats, stored_value


def test_ranges_and_layouts():
    formats = {f.name: f for f in number_formats()}
    assert (formats["FP16"].max_value, formats["FP16"].exponent_bits, formats["FP16"].mantissa_bits) == (65504, 5, 10)
    assert formats["BF16"].exponent_bits == formats["FP32"].exponent_bits == 8
    assert formats["BF16"].epsilon == 2 ** -7 and formats["FP32"].epsilon == 2 ** -23
    assert (formats["INT8"].min_value, formats["INT8"].max_value) == (-128, 127)
    assert (formats["INT4"].min_value, formats["INT4"].max_value) == (-8, 7)


def test_bit_patterns_match_ieee_encoding():
    raw = format(struct.unpack("<I", struct.pack("<f", -2.5))[0], "032b")
    assert bit_pattern(-2.5, "FP32").replace(" ", "") == raw
    assert bit_pattern(-2.5, "BF16").replace(" ", "") == raw[:16]  # bfloat16 is the top half of float32
    assert bit_pattern(1.0, "FP16") == "0 01111 0000000000"
    assert bit_pattern(-1, "INT8") == "11111111"
    assert bit_pattern(100, "INT4") == "0111"  # saturates at 7


def test_stored_values_lose_precision_as_expected():
    assert stored_value(3.14159265, "FP16") == 3.140625
    assert stored_value(70000.0, "FP16") == float("inf")
    assert stored_value(70000.0, "BF16") == 70144.0
    assert stored_value(-9.0, "INT4") == -8.0
