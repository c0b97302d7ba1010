"""How many tokens a text costs, and why Chinese costs more per character than English."""

from __future__ import annotations

import re
from dataclasses import dataclass

from lmforge.tokenizer import Tokenizer

# A "word" is a run of letters/digits in alphabetic scripts, or one CJK character (CJK text has
# no spaces, and one character is the unit readers count).
_CJK = r"\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3040-\u30ff\uac00-\ud7af"
_WORD = re.compile(rf"[{_CJK}]|[^\s{_CJK}\W]+|[0-9]+")


@dataclass
class TokenStats:
    text: str
    ids: list[int]
    tokens: list[str]
    characters: int
    words: int

    @property
    def count(self) -> int:
        return len(self.ids)

    @property
    def chars_per_token(self) -> float:
        return self.characters / self.count if self.count else 0.0

    @property
    def tokens_per_char(self) -> float:
        return self.count / self.characters if self.characters else 0.0

    @property
    def words_per_token(self) -> float:
        return self.words / self.count if self.count else 0.0

    @property
    def tokens_per_word(self) -> float:
        return self.count / self.words if self.words else 0.0

    def to_dict(self, include_ids: bool = True) -> dict:
        d = {"tokens": self.count, "characters": self.characters, "words": self.words,
             "chars_per_token": self.chars_per_token, "tokens_per_char": self.tokens_per_char,
             "words_per_token": self.words_per_token, "tokens_per_word": self.tokens_per_word}
        if include_ids:
            d["ids"] = self.ids
            d["token_strings"] = self.tokens
        return d


def count_words(text: str) -> int:
    return len(_WORD.findall(text))


def token_stats(tokenizer: Tokenizer, text: str) -> TokenStats:
    ids = tokenizer.encode(text, add_special_tokens=False)
    return TokenStats(text, ids, tokenizer.tokens(ids), len(text), count_words(text))
