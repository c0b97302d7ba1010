import pytest

from lmforge.tokenizer import REPLACEMENT_CHAR, byte_level_bytes

CHINESE = "滚滚长江东逝水，浪花淘尽英雄。是非成败转头空：青山依旧在，几度夕阳红。"


def test_streaming_detokenizer_never_emits_half_a_character(embedded):
    tok = embedded.tokenizer
    ids = tok.encode(CHINESE + " Mixed English 和中文 text 😀.", add_special_tokens=False)
    assert len(ids) > len(CHINESE)  # several byte tokens per character, so splits do happen
    detok = tok.detokenizer()
    deltas = [detok.add(i) for i in ids] + [detok.flush()]
    assert "".join(deltas) == tok.decode(ids)
    assert all(REPLACEMENT_CHAR not in d for d in deltas)
    assert sum(1 for d in deltas if d == "") > 0  # some tokens were held back


def test_chat_template_from_gguf_metadata(embedded):
    tok = embedded.tokenizer
    ids = tok.apply_chat_template([{"role": "user", "content": "Hi there"}])
    text = tok.decode(ids, skip_special_tokens=False)
    assert "<|im_start|>user\nHi there<|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n")


def test_token_pieces_show_bytes_of_partial_characters(embedded):
    tok = embedded.tokenizer
    ids = tok.encode("语", add_special_tokens=False)
    pieces = tok.tokens(ids)
    assert "".join(pieces).count("<0x") == len("语".encode("utf-8"))
    assert byte_level_bytes("Ġ") == b" "


def test_a_chat_without_messages_is_a_request_error(embedded):
    from lmforge.errors import RequestError

    with pytest.raises(RequestError, match="at least one message"):
        embedded.tokenizer.apply_chat_template([])
