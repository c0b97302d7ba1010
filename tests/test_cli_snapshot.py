"""Every command's --help text and the keys of its --json output, held against the snapshot
taken before the house was reshaped (tests/cli_snapshot.py says how to renew it on purpose)."""

import json

import pytest

from cli_snapshot import SNAPSHOT, help_texts, json_shapes
from fake_openai import FakeServer


@pytest.fixture(scope="module")
def snapshot() -> dict:
    return json.loads(SNAPSHOT.read_text())


def test_every_help_text_is_unchanged(snapshot):
    now = help_texts()
    assert sorted(now) == sorted(snapshot["help"]), "commands were added or removed"
    for command, text in snapshot["help"].items():
        assert now[command] == text, f"`lmforge {command} --help` changed"


def test_every_json_output_keeps_its_keys(snapshot, tiny_gguf, shared_data):
    with FakeServer(ttft_s=0.01, itl_s=0.001) as server:
        now = json_shapes(tiny_gguf, shared_data / "wikitext2_test.txt", server.url)
    assert sorted(now) == sorted(snapshot["json"])
    for name, keys in snapshot["json"].items():
        assert now[name] == keys, f"the keys of `lmforge {name} --json` changed"
