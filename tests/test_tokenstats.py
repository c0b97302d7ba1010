from lmforge.tokenstats import count_words, token_stats


def test_chinese_costs_more_tokens_per_character_than_english(embedded, shared_data):
    english = (shared_data / "wikitext2_test.txt").read_text(encoding="utf-8")[:20000]
    chinese = (shared_data / "zh_sanguo_ch1-10.txt").read_text(encoding="utf-8")[:5000]
    en = token_stats(embedded.tokenizer, english)
    zh = token_stats(embedded.tokenizer, chinese)
    assert en.count == len(embedded.tokenizer.encode(english, add_special_tokens=False))
    assert zh.tokens_per_char > 3 * en.tokens_per_char
    assert en.chars_per_token > 3  # English: several characters per token
    assert zh.tokens_per_char > 1  # Chinese: more than one token per character


def test_word_counting():
    assert count_words("Hello, world! It's 2024.") == 5
    assert count_words("你好世界") == 4
    assert count_words("GPU 芯片") == 3
