"""The export gate: a round's GGUF is checked against the merged 16-bit model it came from before it
can become the student (contract §4).

A loop that promotes its own exports must not let a broken conversion through: a wrong chat
template, EOS or BOS id, a tokenizer whose vocabulary is not the model's, or output weights lost on
the way (an untied head replaced by the embeddings) all give a file that loads and answers, badly.
Four checks, cheapest first, every number recorded:

1. metadata: the GGUF's EOS/BOS ids and chat template equal the tokenizer's (both files);
2. tokenizer: llama.cpp's ids for probe texts and rendered prompts equal the tokenizer's;
3. logits: the unquantized (f16) conversion against the merged model (transformers, float32) on
   rendered prompts: top-1 agreement and the largest difference as a share of the logit range.
   f16 rounds each weight to about 3 significant digits, which moves a 135M model's logits by about
   0.1 on a range of about 70 (0.2 %); a lost output matrix or a wrong vocabulary moves them by tens;
   so 5 % of the range and 90 % top-1 separate the two with a wide margin;
4. answers: greedy answers of the quantized file against the f16 file (the 16-bit model, as check 3
   established) on validation prompts; quantization changes some answers of a small model, a broken
   file changes nearly all.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import UserError

PROBE_TEXTS = ("Hello world", "The quick brown fox jumps over the lazy dog.", "Input: 3 + 4\nOutput: 7",
               "  leading spaces and\ttabs", "naïve café, 2024!")


class ExportRejected(UserError):
    """The gate found the exported GGUF unfaithful; `record` holds every check's numbers."""

    def __init__(self, message: str, record: dict[str, Any]) -> None:
        super().__init__(message)
        self.record = record


def metadata_problems(tok, gguf_path: Path) -> list[str]:
    """EOS/BOS ids and chat template of the GGUF against the tokenizer's."""
    from .gguf_import import GGUFFile

    f = GGUFFile(gguf_path)
    problems = []
    for name, ours in (("EOS", tok.eos_token_id), ("BOS", tok.bos_token_id)):
        theirs = f.get(f"tokenizer.ggml.{name.lower()}_token_id")
        if ours is not None and theirs is not None and int(theirs) != int(ours):
            problems.append(f"the GGUF's {name} id {theirs} differs from the tokenizer's {ours}")
        elif ours is not None and theirs is None and name == "EOS":
            problems.append("the GGUF has no EOS id")
    ours_t, theirs_t = tok.chat_template or None, f.get("tokenizer.chat_template") or None
    if ours_t != theirs_t:
        problems.append("the GGUF has no chat template but the tokenizer has one" if theirs_t is None else
                        "the GGUF has a chat template but the tokenizer has none" if ours_t is None else
                        "the GGUF's chat template differs from the tokenizer's")
    return problems


def tokenizer_problem(tok, gguf_path: Path, texts: Sequence[str]) -> str | None:
    """The first text llama.cpp tokenizes differently from the model's tokenizer, as a message."""
    from .models import gguf_tokenize_all

    for text, theirs in zip(texts, gguf_tokenize_all(gguf_path, list(texts)), strict=True):
        ours = tok(text)["input_ids"]
        if ours != theirs:
            return (f"the GGUF's tokenizer disagrees with the model's on {text[:30]!r} "
                    f"({theirs[:8]} vs {ours[:8]})")
    return None


def greedy_answers(gguf_path: Path, prompts: Sequence[str], max_tokens: int, stops: tuple[str, ...], engine) -> list[str]:
    from .engine import open_sampler
    from .engine.base import Request, SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, stop=stops)
    with open_sampler(gguf_path, engine) as sampler:
        outs = sampler.generate([Request(p, params) for p in prompts])
    return [o[0].text.strip() for o in outs]


def check_export(merged_dir: Path, f16_gguf: Path, quant_gguf: Path, user_texts: Sequence[str], cfg, engine,
                 use_chat_template: bool = True) -> dict[str, Any]:
    """Run the four checks; returns their numbers, or raises ExportRejected naming what differs.

    `user_texts`: validation prompts (user text, before rendering); `cfg`: the ExportConfig."""
    from .gguf_import import measure_fidelity
    from .metrics import normalize
    from .models import load_tokenizer
    from .prompts import PromptFormat

    t0 = time.monotonic()
    tok = load_tokenizer(merged_dir)
    fmt = PromptFormat.from_tokenizer(tok, use_chat_template)
    files = [f16_gguf] if f16_gguf == quant_gguf else [f16_gguf, quant_gguf]
    problems: list[str] = []
    for path in files:
        problems += [p for p in metadata_problems(tok, path) if p not in problems]
    rendered = [fmt.render(t) for t in user_texts]
    if bad := tokenizer_problem(tok, quant_gguf, [*PROBE_TEXTS, *rendered[:3]]):
        problems.append(bad)
    logit_prompts = tuple(user_texts[:3]) or ("Hello",)
    fid = measure_fidelity(merged_dir, f16_gguf, logit_prompts, hf_tok=tok, use_chat_template=use_chat_template)
    share = fid["max_abs_logit_diff"] / max(fid["logit_range"], 1e-6)
    record: dict[str, Any] = {"logits": {**fid, "max_diff_share_of_range": share}}
    if fid["top1_agreement"] < cfg.gate_min_top1 or share > cfg.gate_max_logit_diff:
        problems.append(f"logits of the f16 conversion differ from the merged model (top-1 agreement "
                        f"{fid['top1_agreement']:.0%}, largest difference {fid['max_abs_logit_diff']:.2f} = "
                        f"{share:.1%} of the logit range)")
    if quant_gguf != f16_gguf and rendered:
        ref = greedy_answers(f16_gguf, rendered, cfg.gate_answer_tokens, fmt.answer_stops, engine)
        got = greedy_answers(quant_gguf, rendered, cfg.gate_answer_tokens, fmt.answer_stops, engine)
        agree = sum(normalize(a) == normalize(b) for a, b in zip(ref, got, strict=True))
        record["answers"] = {"prompts": len(rendered), "agree": agree, "agreement": agree / len(rendered)}
        if agree / len(rendered) < cfg.gate_min_agreement:
            problems.append(f"answers of the quantized file agree with the 16-bit model's on {agree}/{len(rendered)} "
                            f"validation prompts (at least {cfg.gate_min_agreement:.0%} needed)")
    record.update(passed=not problems, problems=problems, seconds=round(time.monotonic() - t0, 2))
    if problems:
        raise ExportRejected(f"{quant_gguf.name} failed the export check: {'; '.join(problems)}", record)
    return record
