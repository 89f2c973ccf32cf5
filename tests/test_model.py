"""`kvbench model tiny`: a tiny random Llama + a locally trained tokenizer, deterministic, loadable."""

from __future__ import annotations

import json

import pytest
import typer
from typer.testing import CliRunner

from kvbench.errors import KvbenchError
from kvbench.http.model import TinyModelSpec, build_tiny_model, kv_bytes_per_token, register_model
from kvbench.tokenizer import VOCAB_SIZE

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("m") / "tiny", TinyModelSpec(hidden=64, layers=1, heads=2,
                                                                                   max_positions=512))


def test_loads_with_transformers_and_accepts_builtin_token_ids(model_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    assert model.config.vocab_size >= VOCAB_SIZE > tok.vocab_size
    ids = tok("Baba kede fifo.")["input_ids"]
    assert ids[0] == tok.bos_token_id and len(ids) > 2
    logits = model(torch.tensor([[VOCAB_SIZE - 1, 5, 7]])).logits  # an id past the BPE vocab still embeds
    assert logits.shape == (1, 3, model.config.vocab_size)
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert chat.startswith("<s><|user|>\nhi\n") and chat.endswith("<|assistant|>\n")


def test_build_is_deterministic_and_seeded(tmp_path, model_dir):
    spec = TinyModelSpec(hidden=64, layers=1, heads=2, max_positions=512)
    again = build_tiny_model(tmp_path / "again", spec)
    for name in ("model.safetensors", "tokenizer.json", "config.json", "tokenizer_config.json"):
        assert (again / name).read_bytes() == (model_dir / name).read_bytes(), name
    other = build_tiny_model(tmp_path / "other", TinyModelSpec(hidden=64, layers=1, heads=2, max_positions=512, seed=1))
    assert (other / "model.safetensors").read_bytes() != (model_dir / "model.safetensors").read_bytes()


def test_kv_bytes_per_token(model_dir):
    # keys + values x 1 layer x 2 KV heads x head dim 32 x bfloat16
    assert kv_bytes_per_token(model_dir) == 2 * 1 * 2 * 32 * 2
    assert kv_bytes_per_token(model_dir, dtype_bytes=4) == 2 * 1 * 2 * 32 * 4


def test_cli_builds_and_rejects_bad_shapes(tmp_path):
    app = typer.Typer()
    register_model(app)
    out = tmp_path / "cli-model"
    res = CliRunner().invoke(app, ["model", "tiny", str(out), "--hidden", "32", "--layers", "1", "--heads", "2"])
    assert res.exit_code == 0, res.output
    assert json.loads((out / "config.json").read_text())["hidden_size"] == 32
    res = CliRunner().invoke(app, ["model", "tiny", str(tmp_path / "bad"), "--hidden", "30", "--heads", "4"])
    assert isinstance(res.exception, KvbenchError) and "--hidden 30" in str(res.exception)
    assert not (tmp_path / "bad").exists()


def test_kv_bytes_names_a_missing_model(tmp_path):
    with pytest.raises(KvbenchError, match="config.json: not found"):
        kv_bytes_per_token(tmp_path)
