"""POST /tokenize and /detokenize: the server's tokenizer and chat template, for clients."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request

from lmforge.serve.errors import ApiError
from lmforge.serve.generation import chat_prompt
from lmforge.serve.protocol import DetokenizeRequest, TokenizeRequest, check_prompt_characters
from lmforge.serve.routes import admit

router = APIRouter()


@router.post("/tokenize")
async def tokenize(body: TokenizeRequest, request: Request):
    state = admit(request, body.model)
    if (body.prompt is None) == (body.messages is None):
        raise ApiError(400, "give either prompt or messages", "invalid_request_error", "prompt")
    if body.messages is not None:
        ids = await chat_prompt(state, [{"role": m.role, "content": m.text()} for m in body.messages])
    else:
        check_prompt_characters([body.prompt], state.engine.max_seq_len)
        ids = await asyncio.to_thread(state.tokenizer.encode, body.prompt, add_special_tokens=body.add_special_tokens)
    return {"tokens": ids, "count": len(ids), "max_model_len": state.engine.max_seq_len}


@router.post("/detokenize")
async def detokenize(body: DetokenizeRequest, request: Request):
    state = admit(request, body.model)
    vocab = state.lm.config.vocab_size
    if any(not 0 <= t < vocab for t in body.tokens):
        raise ApiError(400, f"token ids must be in [0, {vocab})", "invalid_request_error", "tokens")
    return {"prompt": state.tokenizer.decode(body.tokens, skip_special_tokens=False)}
