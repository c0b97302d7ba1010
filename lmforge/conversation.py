"""A chat history that fits a context window: the oldest turns go first."""

from __future__ import annotations


def trim_history(tokenizer, system: list[dict], history: list[dict], window: int, reserve: int):
    """Drop the oldest turns until the templated conversation plus `reserve` fits the window.

    Returns (prompt ids, history kept, turns dropped)."""
    dropped = 0
    while True:
        ids = tokenizer.apply_chat_template(system + history)
        if len(ids) + reserve <= window or len(history) <= 1:
            return ids, history, dropped
        # A turn is a user message and the answer after it.
        cut = 2 if len(history) > 2 and history[1]["role"] == "assistant" else 1
        history = history[cut:]
        dropped += cut
