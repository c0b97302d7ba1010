"""Request bodies of the HTTP API (OpenAI's and the seed's /generate), validated by pydantic.

Every check a request can fail without the model is here (ranges, shapes, text that is not
Unicode, prompts too long to tokenize); the checks that need the model (vocabulary, context
window) are the engine's (`Engine.encode_prompt`, `Engine.check_fits`). /generate and the OpenAI
routes share both, so a bad value becomes the same 400 naming it everywhere.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from lmforge.errors import RequestError
from lmforge.sampling import MAX_LOGPROBS, SamplingParams

MAX_N = 8
MAX_STOP = 16
SEED_MAX = 2 ** 63 - 1


# A prompt longer than this many characters per token of the window cannot fit (no token of a
# byte-level vocabulary is this long), so it is refused before the tokenizer spends time on it.
MAX_CHARS_PER_TOKEN = 32


def _lone_surrogate(value, path: str) -> str | None:
    """The path of the first string in `value` that is not valid Unicode (JSON's "\\ud800"
    decodes to a lone surrogate, which no tokenizer or UTF-8 encoder takes), else None."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path
        return None
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        found = _lone_surrogate(key, path) if isinstance(key, str) else None
        found = found or _lone_surrogate(item, f"{path}.{key}" if path else str(key))
        if found:
            return found
    return None


class _Body(BaseModel):
    """A request body: text anywhere in it must be valid Unicode."""

    @model_validator(mode="before")
    @classmethod
    def _text_is_unicode(cls, data):
        where = _lone_surrogate(data, "")
        if where is not None:
            raise PydanticCustomError("invalid_unicode", "{param}: not valid Unicode text (a lone surrogate "
                                      "such as \\ud800)", {"param": where.split(".")[0] or "body"})
        return data


def check_prompt_characters(texts: list[str], max_seq_len: int, param: str = "prompt") -> None:
    """Refuse text that cannot fit the window, before tokenizing it (RequestError)."""
    limit = MAX_CHARS_PER_TOKEN * max_seq_len
    total = sum(len(t) for t in texts)
    if total > limit:
        raise RequestError(f"the prompt has {total} characters; a {max_seq_len}-token window takes at most "
                           f"{limit}", param=param)


class StreamOptions(BaseModel):
    include_usage: bool = False


class _Sampling(_Body):
    """Fields every generation endpoint takes (OpenAI's and vLLM's extensions)."""

    model_config = ConfigDict(extra="ignore")

    temperature: float | None = Field(None, ge=0, le=100)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=-1, le=1_000_000)  # -1 (vLLM) and 0 both mean off
    min_p: float = Field(0.0, ge=0, le=1)
    repetition_penalty: float = Field(1.0, gt=0, le=10)
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    seed: int | None = Field(None, ge=0, le=SEED_MAX)
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = Field(None, max_length=MAX_STOP)
    ignore_eos: bool = False
    min_tokens: int = Field(0, ge=0, le=1_000_000)
    n: int = Field(1, ge=1, le=MAX_N)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None

    def stops(self) -> tuple[str, ...]:
        stops = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        if len(stops) > MAX_STOP:
            raise RequestError(f"at most {MAX_STOP} stop strings", param="stop")
        if any(not s for s in stops):
            raise RequestError("stop strings must not be empty", param="stop")
        return stops

    def sampling_params(self, max_tokens: int, logprobs: int | None = None, prompt_logprobs: bool = False,
                        seed_offset: int = 0, default_temperature: float = 1.0) -> SamplingParams:
        seed = None if self.seed is None else (self.seed + seed_offset) % (SEED_MAX + 1)
        return SamplingParams(
            temperature=default_temperature if self.temperature is None else self.temperature,
            top_k=max(self.top_k, 0), top_p=self.top_p, min_p=self.min_p,
            repetition_penalty=self.repetition_penalty, presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty, seed=seed, max_tokens=max_tokens, min_tokens=self.min_tokens,
            ignore_eos=self.ignore_eos, stop=self.stops(), stop_token_ids=tuple(self.stop_token_ids or ()),
            logprobs=logprobs, prompt_logprobs=prompt_logprobs)


class CompletionRequest(_Sampling):
    model: str
    prompt: str | list[str] | list[int] | list[list[int]] = Field(..., min_length=1)
    max_tokens: int | None = Field(16, ge=1)
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    echo: bool = False
    suffix: str | None = None
    logit_bias: dict[str, float] | None = None
    best_of: int | None = Field(None, ge=1, le=MAX_N)


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ChatCompletionRequest(_Sampling):
    model: str
    messages: list[ChatMessage] = Field(..., min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    logit_bias: dict[str, float] | None = None
    tools: list[dict] | None = None


class GenerateRequest(_Sampling):
    """The seed's contract: {"prompt": ..., "max_tokens": ...} plus every sampling parameter."""

    prompt: str | list[int] = Field(..., min_length=1)
    max_tokens: int = Field(128, ge=1)
    model: str | None = None


class TokenizeRequest(_Body):
    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = Field(None, min_length=1)
    add_special_tokens: bool = True


class DetokenizeRequest(_Body):
    model: str | None = None
    tokens: list[int] = Field(..., max_length=1_000_000)
