"""Tiny Llama / Llama 3.x / Qwen2 / Qwen3 / Gemma 3 models with a sentencepiece tokenizer, built locally with no download.

Used by the demo student and by the tests. transformers 5.x needs the HF tokenizer built
explicitly from the sentencepiece model (a bare LlamaTokenizer(vocab_file=...) silently gives a 3-token vocabulary): we extract vocab and merges and check that
the HF ids equal sentencepiece's ids before saving. `add_dummy_prefix` is off so that sentencepiece,
the HF tokenizer and llama.cpp agree on leading spaces too.
"""

from __future__ import annotations

import math
import random
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import sentencepiece as spm

from ..errors import UserError

PROBE_STRINGS = ("Input: the team wins\nOutput: sports", " two  spaces", "digits 12345 é ü", "a\n\nb")


@dataclass(frozen=True)
class TinyShape:
    hidden: int = 128
    layers: int = 4
    heads: int = 4
    kv_heads: int = 2
    intermediate: int = 512
    max_positions: int = 2048


LLAMA32_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}

SHAPES = {
    "tiny": TinyShape(),
    "small": TinyShape(hidden=256, layers=6, heads=4, kv_heads=2, intermediate=768),
}


def train_sentencepiece(texts: Iterable[str], out_dir: Path, vocab_size: int = 512, dummy_prefix: bool = False) -> Path:
    """Train a byte-fallback BPE sentencepiece model on `texts`; returns the .model path.

    `dummy_prefix` is sentencepiece's add_dummy_prefix: llama.cpp's converter records it for Llama
    but not for Qwen2 (which then assumes it on), so Qwen2 test models need it on.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False, encoding="utf-8") as fh:
        for t in texts:  # sentencepiece trains on lines; newlines themselves become byte pieces
            fh.writelines(line + "\n" for line in t.split("\n") if line.strip())
        corpus = fh.name
    prefix = out_dir / "tokenizer"
    spm.SentencePieceTrainer.train(
        input=corpus,
        model_prefix=str(prefix),
        vocab_size=vocab_size,
        model_type="bpe",
        byte_fallback=True,
        character_coverage=1.0,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        add_dummy_prefix=dummy_prefix,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        split_digits=True,
        allow_whitespace_only_pieces=True,
        num_threads=2,
        minloglevel=2,
    )
    Path(corpus).unlink(missing_ok=True)
    Path(f"{prefix}.vocab").unlink(missing_ok=True)
    return Path(f"{prefix}.model")


def hf_tokenizer_from_sentencepiece(model_file: Path, dummy_prefix: bool = False):
    """A transformers LlamaTokenizer equal, id for id, to the sentencepiece model."""
    from transformers import LlamaTokenizer
    from transformers.convert_slow_tokenizer import SentencePieceExtractor

    extracted = SentencePieceExtractor(str(model_file)).extract(None)
    tok = LlamaTokenizer(
        vocab=extracted["vocab"],
        merges=extracted["merges"],
        legacy=False,
        add_prefix_space=dummy_prefix,
        add_bos_token=True,
        add_eos_token=False,
    )
    sp = spm.SentencePieceProcessor(model_file=str(model_file))
    for probe in PROBE_STRINGS if not dummy_prefix else PROBE_STRINGS[:1]:  # HF differs on leading spaces
        if tok(probe, add_special_tokens=False)["input_ids"] != sp.encode(probe):
            raise RuntimeError(f"HF tokenizer disagrees with sentencepiece on {probe!r}")
    tok.pad_token = tok.eos_token
    return tok


def build_tiny_model(
    out_dir: Path,
    texts: Iterable[str],
    *,
    arch: str = "llama",
    shape: TinyShape | None = None,
    vocab_size: int = 512,
    seed: int = 0,
    chat_template: str | None = None,
):
    """Random-init model + tokenizer saved as a HF checkpoint (safetensors, float32).

    Returns (model, tokenizer) so a caller can pretrain before saving again.
    """
    import torch
    from transformers import (
        Gemma3ForCausalLM,
        Gemma3TextConfig,
        LlamaConfig,
        LlamaForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
        Qwen3Config,
        Qwen3ForCausalLM,
    )

    shape = shape or TinyShape()
    out_dir = Path(out_dir)
    dummy_prefix = arch in ("qwen2", "qwen3")
    sp_model = train_sentencepiece(texts, out_dir, vocab_size, dummy_prefix=dummy_prefix)
    tok = hf_tokenizer_from_sentencepiece(sp_model, dummy_prefix=dummy_prefix)
    if chat_template:
        tok.chat_template = chat_template
    common = dict(
        vocab_size=vocab_size,
        hidden_size=shape.hidden,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        intermediate_size=shape.intermediate,
        max_position_embeddings=shape.max_positions,
        rms_norm_eps=1e-6,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    if arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common))
    elif arch == "llama3":
        # Llama 3.2's RoPE: base 500000, llama3 scaling (factor 32); the converter stores it as rope_freqs
        model = LlamaForCausalLM(LlamaConfig(**{**common, "max_position_embeddings": 131072}, rope_parameters=LLAMA32_ROPE))
    elif arch == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common, use_sliding_window=False))
    elif arch == "qwen3":
        # Qwen3: per-head RMS norms on queries and keys, head_dim given explicitly
        model = Qwen3ForCausalLM(Qwen3Config(**common, head_dim=shape.hidden // shape.heads, use_sliding_window=False))
    elif arch == "gemma3":
        # Gemma 3 as llama.cpp assumes it (every 6th layer global, local RoPE base 10000, query scale
        # 1/sqrt(head_dim)); 7 layers so that both kinds occur; a window shorter than the test prompts
        head_dim = shape.hidden // shape.heads
        model = Gemma3ForCausalLM(Gemma3TextConfig(
            **{**common, "num_hidden_layers": 7, "tie_word_embeddings": True}, head_dim=head_dim,
            query_pre_attn_scalar=head_dim, sliding_window=16,
            layer_types=["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(7)],
            rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                             "full_attention": {"rope_type": "default", "rope_theta": 1000000.0}}))
    else:
        raise UserError(f"unknown tiny architecture {arch!r} (llama, llama3, qwen2, qwen3 or gemma3)")
    model = model.to(torch.float32)
    save_checkpoint(model, tok, out_dir)
    return model, tok


def save_checkpoint(model, tok, out_dir: Path) -> None:
    model.save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)
    model.generation_config.save_pretrained(out_dir)


def pretrain(model, tok, docs: list[str], seconds: float | None, log: Callable[[str], None], seed: int = 0,
             steps: int | None = None, batch_size: int = 16, lr: float = 3e-3) -> dict:
    """Causal-LM pretraining on `docs` (AdamW, warmup then cosine decay) for a wall-clock budget
    (`seconds`) or, reproducibly whatever the machine's load, a number of `steps`."""
    import torch

    if (seconds is None) == (steps is None):
        raise ValueError("give exactly one of seconds and steps")
    torch.manual_seed(seed)
    rng = random.Random(seed)
    eos = tok.eos_token_id
    encoded = [tok(d, add_special_tokens=True)["input_ids"] + [eos] for d in docs]
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.95))
    model.train()
    start, step, losses = time.monotonic(), 0, []
    warmup = 30

    def progress_share() -> float:
        return step / steps if steps else (time.monotonic() - start) / seconds

    while progress_share() < 1.0:
        batch = rng.sample(encoded, batch_size)
        width = max(map(len, batch))
        ids = torch.full((batch_size, width), eos, dtype=torch.long)
        labels = torch.full((batch_size, width), -100, dtype=torch.long)
        mask = torch.zeros((batch_size, width), dtype=torch.long)
        for row, seq in enumerate(batch):
            ids[row, : len(seq)] = torch.tensor(seq)
            labels[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
        lr_scale = min(1.0, (step + 1) / warmup) * max(0.05, 0.5 * (1 + math.cos(math.pi * progress_share())))
        for group in opt.param_groups:
            group["lr"] = lr * lr_scale
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        step += 1
        if step % 100 == 0:
            log(f"  pretrain step {step}{f'/{steps}' if steps else ''}  loss {sum(losses[-100:]) / 100:.3f}  "
                f"{time.monotonic() - start:.0f}s")
    model.eval()
    return {"steps": step, "seconds": round(time.monotonic() - start, 1), "final_loss": round(losses[-1], 4)}
