"""`kvbench model tiny DIR`: a random-weight Llama and a locally trained BPE tokenizer, for tests and demos.

Nothing is downloaded: the tokenizer is trained on text made from kvbench's built-in syllable words, and
the weights come from a seeded ``torch.Generator``. The model's vocabulary is padded up to the built-in
tokenizer's ``VOCAB_SIZE`` so traces tokenized with the built-in tokenizer can be sent as token-id prompts
(vLLM accepts ids below the *model's* vocab size even where the tokenizer has no piece for them).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import typer

from kvbench.errors import fail
from kvbench.fsutil import atomic_dir
from kvbench.tokenizer import VOCAB_SIZE, builtin_words

BOS, EOS, UNK, PAD = "<s>", "</s>", "<unk>", "<pad>"
SPECIAL_TOKENS = [UNK, BOS, EOS, PAD]  # ids 0..3
BPE_VOCAB = 4096
CORPUS_LINES = 4000

# A Llama-3-like template, short enough to read: system/user/assistant turns between markers.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)


@dataclass(frozen=True)
class TinyModelSpec:
    hidden: int = 128
    layers: int = 2
    heads: int = 4
    max_positions: int = 8192
    seed: int = 0

    def validate(self) -> None:
        for name in ("hidden", "layers", "heads", "max_positions"):
            if getattr(self, name) <= 0:
                raise fail(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.hidden % self.heads:
            raise fail(f"--hidden {self.hidden} must be a multiple of --heads {self.heads}")
        if (self.hidden // self.heads) % 2:
            raise fail(f"--hidden/--heads = {self.hidden // self.heads} must be even (rotary embeddings)")


def kv_bytes_per_token(model_dir: str | Path, dtype_bytes: int | None = None) -> int:
    """KV-cache bytes one token takes in the model at ``model_dir`` (keys + values, all layers)."""
    cfg_path = Path(model_dir) / "config.json"
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise fail(f"{cfg_path}: not found; --model must be a local Hugging Face model directory") from None
    except json.JSONDecodeError as exc:
        raise fail(f"{cfg_path}: invalid JSON ({exc.msg} at line {exc.lineno})") from None
    cfg = cfg.get("text_config", cfg)
    try:
        layers = int(cfg["num_hidden_layers"])
        heads = int(cfg["num_attention_heads"])
        kv_heads = int(cfg.get("num_key_value_heads") or heads)
        head_dim = int(cfg.get("head_dim") or int(cfg["hidden_size"]) // heads)
    except (KeyError, TypeError, ValueError) as exc:
        raise fail(f"{cfg_path}: cannot read the attention shape ({exc}); is it a decoder-only model?") from None
    if dtype_bytes is None:
        dtype = str(cfg.get("torch_dtype") or cfg.get("dtype") or "bfloat16")
        dtype_bytes = 4 if "32" in dtype else 2
    return 2 * layers * kv_heads * head_dim * dtype_bytes


def _corpus(seed: int) -> list[str]:
    """Deterministic pseudo-sentences over the built-in syllable words (Zipf-ish word frequencies)."""
    rng = np.random.default_rng(seed)
    words = builtin_words()[:2048]
    ranks = np.arange(1, len(words) + 1, dtype=np.float64)
    probs = (1.0 / ranks) / (1.0 / ranks).sum()
    punct = np.array([".", ",", "?", "!", ";", ":"], dtype=object)
    lines = []
    for _ in range(CORPUS_LINES):
        n = int(rng.integers(4, 24))
        picked = words[rng.choice(len(words), size=n, p=probs)]
        line = " ".join(picked.tolist()) + str(punct[rng.integers(len(punct))])
        lines.append(line.capitalize() if rng.random() < 0.5 else line)
    digits = [" ".join(str(int(x)) for x in rng.integers(0, 10000, size=8)) for _ in range(200)]
    return lines + digits


def train_tokenizer(seed: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(seed), trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    return tok


def _init_weights(model, seed: int) -> None:
    """Overwrite every parameter from one seeded generator (the global torch RNG is never used)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            if name.endswith("norm.weight"):
                param.fill_(1.0)
            else:
                param.copy_(torch.randn(param.shape, generator=gen, dtype=torch.float32) * 0.02)


def build_tiny_model(out_dir: str | Path, spec: TinyModelSpec = TinyModelSpec()) -> Path:
    """Write a loadable Llama (safetensors + config + tokenizer with chat template) to ``out_dir``."""
    spec.validate()
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = train_tokenizer(spec.seed)
    vocab = max(VOCAB_SIZE, tok.get_vocab_size())
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=spec.hidden,
        intermediate_size=spec.hidden * 2,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.heads,
        max_position_embeddings=spec.max_positions,
        bos_token_id=tok.token_to_id(BOS),
        eos_token_id=tok.token_to_id(EOS),
        pad_token_id=tok.token_to_id(PAD),
        tie_word_embeddings=False,
        torch_dtype="bfloat16",  # what vLLM's CPU backend runs anyway
    )
    with torch.random.fork_rng(devices=[]):
        model = LlamaForCausalLM(config)
    _init_weights(model, spec.seed)
    model = model.to(torch.bfloat16).eval()

    out = Path(out_dir)
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save(str(tmp / "tokenizer.json"))
        tokenizer_config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": BOS,
            "eos_token": EOS,
            "unk_token": UNK,
            "pad_token": PAD,
            "model_max_length": spec.max_positions,
            "add_bos_token": True,
            "clean_up_tokenization_spaces": False,
            "chat_template": CHAT_TEMPLATE,
        }
        (tmp / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")
        special = {"bos_token": BOS, "eos_token": EOS, "unk_token": UNK, "pad_token": PAD}
        (tmp / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
        (tmp / "kvbench_model.json").write_text(json.dumps({"kind": "tiny-llama", **asdict(spec)}, indent=2) + "\n")
    return out


def register_model(app: typer.Typer) -> None:
    model_app = typer.Typer(help="Build small local models for tests and demos.", no_args_is_help=True)

    @model_app.command("tiny")
    def tiny(
        out_dir: Path = typer.Argument(..., help="Directory to write (replaced if it exists)."),
        hidden: int = typer.Option(128, "--hidden", help="Hidden size."),
        layers: int = typer.Option(2, "--layers", help="Decoder layers."),
        heads: int = typer.Option(4, "--heads", help="Attention heads (= KV heads)."),
        max_positions: int = typer.Option(8192, "--max-positions", help="Maximum sequence length."),
        seed: int = typer.Option(0, "--seed", help="Seed of the weights and the tokenizer corpus."),
    ) -> None:
        """A random-weight Llama and a locally trained BPE tokenizer (no downloads)."""
        spec = TinyModelSpec(hidden=hidden, layers=layers, heads=heads, max_positions=max_positions, seed=seed)
        path = build_tiny_model(out_dir, spec)
        typer.echo(f"wrote {path} (vocab {max(VOCAB_SIZE, BPE_VOCAB)}, {kv_bytes_per_token(path)} KV bytes/token)")

    app.add_typer(model_app, name="model")
