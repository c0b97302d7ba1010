"""Tokenizer, chat template and incremental detokenization (never half a UTF-8 character)."""

from __future__ import annotations

from pathlib import Path

from lmforge.errors import ModelError, RequestError

REPLACEMENT_CHAR = "\ufffd"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "vocab.json", "merges.txt", "generation_config.json")


def copy_tokenizer_files(source: Path, target: Path) -> None:
    """Copy the tokenizer and chat template so a written model folder runs on its own."""
    import shutil

    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, target / name)


class Tokenizer:
    """A thin wrapper over a Hugging Face fast tokenizer loaded from a model directory."""

    def __init__(self, hf_tokenizer, eos_token_ids: tuple[int, ...] = ()):
        self.hf = hf_tokenizer
        ids = set(eos_token_ids)
        if hf_tokenizer.eos_token_id is not None:
            ids.add(hf_tokenizer.eos_token_id)
        self.eos_token_ids = tuple(sorted(ids))

    @classmethod
    def from_dir(cls, folder: str | Path, eos_token_ids: tuple[int, ...] = ()) -> "Tokenizer":
        from transformers import AutoTokenizer

        try:
            hf = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
        except Exception as e:
            raise ModelError(f"{folder}: no usable tokenizer ({e})") from None
        return cls(hf, eos_token_ids)

    @property
    def vocab_size(self) -> int:
        return len(self.hf)

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.hf, "chat_template", None))

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.hf.encode(text, add_special_tokens=add_special_tokens)

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self.hf.decode(ids, skip_special_tokens=skip_special_tokens)

    def tokens(self, ids: list[int]) -> list[str]:
        """Readable token strings: the text of each token, or its bytes (<0xE5>) when the token
        holds only part of a UTF-8 character."""
        pieces = []
        for token_id, raw in zip(ids, self.hf.convert_ids_to_tokens(ids)):
            text = self.hf.decode([token_id])
            if REPLACEMENT_CHAR in text and raw is not None:
                data = byte_level_bytes(raw)
                text = "".join(f"<0x{b:02X}>" for b in data) if data is not None else raw
            pieces.append(text)
        return pieces

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> list[int]:
        if not self.has_chat_template:
            raise RequestError("this model's tokenizer has no chat template; use raw text generation")
        if not messages:
            raise RequestError("a chat needs at least one message")
        for m in messages:
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                raise RequestError("each chat message needs a 'role' and a 'content'")
        text = self.hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
        return self.encode(text, add_special_tokens=False)

    def detokenizer(self, prompt_ids: list[int] | None = None) -> "IncrementalDetokenizer":
        return IncrementalDetokenizer(self, prompt_ids or [])


def _byte_level_alphabet() -> dict[str, int]:
    """The printable stand-ins byte-level BPE vocabularies use for the 256 byte values."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


_BYTE_LEVEL = _byte_level_alphabet()


def byte_level_bytes(token: str) -> bytes | None:
    """The bytes behind a byte-level BPE token string, or None for other vocabularies."""
    try:
        return bytes(_BYTE_LEVEL[c] for c in token)
    except KeyError:
        return None


class IncrementalDetokenizer:
    """Turns a growing list of token ids into text deltas.

    Decodes a short window of trailing ids and emits only text that is complete: a window that
    ends in a partial UTF-8 sequence decodes to U+FFFD and is held back until the rest arrives.
    """

    def __init__(self, tokenizer: Tokenizer, prompt_ids: list[int]):
        self.tokenizer = tokenizer
        self.ids: list[int] = list(prompt_ids[-6:])
        self.prefix_offset = 0
        self.read_offset = len(self.ids)
        self.text = ""

    def add(self, token_id: int) -> str:
        self.ids.append(token_id)
        decode = self.tokenizer.decode
        prefix_text = decode(self.ids[self.prefix_offset:self.read_offset])
        full_text = decode(self.ids[self.prefix_offset:])
        if len(full_text) > len(prefix_text) and not full_text.endswith(REPLACEMENT_CHAR):
            delta = full_text[len(prefix_text):]
            self.prefix_offset = self.read_offset
            self.read_offset = len(self.ids)
            self.text += delta
            return delta
        return ""

    def flush(self) -> str:
        """Whatever is still held back at the end of generation (may hold U+FFFD)."""
        rest = self.tokenizer.decode(self.ids[self.prefix_offset:])
        prefix_text = self.tokenizer.decode(self.ids[self.prefix_offset:self.read_offset])
        delta = rest[len(prefix_text):]
        self.prefix_offset = self.read_offset = len(self.ids)
        self.text += delta
        return delta
