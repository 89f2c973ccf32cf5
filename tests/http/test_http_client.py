"""The streaming client's pieces that need no server: error classification, chunk accumulation, lazy text."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from kvbench.http.client import ClientSettings, Outcome, _apply_chunk, build_body, rejects_prompt_format
from kvbench.http.prompts import PromptSource
from kvbench.tokenizer import BuiltinTokenizer


def _pyd(field: str, kind: str = "string_type") -> str:
    return json.dumps({"detail": [{"type": kind, "loc": ["body", field], "msg": "Input should be a valid string",
                                   "input": {"prompt": [1, 2], "model": "m"}}]})


def _msg(text: str) -> str:
    return json.dumps({"error": {"message": text, "type": "BadRequestError", "param": "prompt", "code": 400}})


@pytest.mark.parametrize("status, body", [
    (400, _msg("prompt must be a string")),
    (400, _msg("'prompt' must be of type str, got list")),
    (400, _msg("Token id 70000 is out of vocabulary")),
    (422, _pyd("prompt")),
    (400, "prompt: expected a string, not a list of integers"),
])
def test_prompt_format_refusals_fall_back(status, body):
    assert rejects_prompt_format(status, body)


@pytest.mark.parametrize("status, body", [
    (400, _msg("This model's maximum context length is 2048 tokens. However, your request has 3000 input "
               "tokens. Please reduce the length of the prompt.")),
    (400, _msg("The decoder prompt (length 3000) is longer than the maximum model length of 2048.")),
    (422, _pyd("min_tokens", "extra_forbidden")),  # pydantic echoes the whole body (with 'prompt') as input
    (400, _msg("temperature must be non-negative, got -1.0")),
    (500, _msg("prompt must be a string")),  # not a client error
])
def test_other_errors_do_not_fall_back(status, body):
    assert not rejects_prompt_format(status, body)


def test_chunks_accumulate_text_and_ids_in_order():
    out = Outcome()
    for k in range(2000):
        _apply_chunk(out, {"choices": [{"text": f"w{k} ", "token_ids": [k, k + 1]}]}, float(k))
    assert out.text == "".join(f"w{k} " for k in range(2000))
    assert out.token_ids == [t for k in range(2000) for t in (k, k + 1)]
    assert len(out.chunk_times) == 2000 and out.first_token == 0.0


def test_recorded_token_prompts_decode_only_when_text_is_needed():
    ids = np.arange(100, 140, dtype=np.int64)
    df = pd.DataFrame({"request_id": ["a"], "input_tokens": [40], "hash_ids": [[1, 2]], "prompt_token_ids": [ids]})
    src = PromptSource(df, 16)
    p = src.recorded(0)
    assert p.token_ids == ids.tolist() and all(type(t) is int for t in p.token_ids)
    settings = ClientSettings(model="m")
    assert build_body(settings, p, 3, use_ids=True)["prompt"] == ids.tolist()
    assert p.text is None  # sending ids never decoded them
    assert build_body(settings, p, 3, use_ids=False)["prompt"] == BuiltinTokenizer().decode(ids.tolist())
    assert p.text is not None and src.length(0, p) == 40
