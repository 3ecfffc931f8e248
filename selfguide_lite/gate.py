"""The export gate: a round's GGUF is checked against the merged 16-bit model it came from before it
can become the student (contract §4).

A loop that promotes its own exports must not let a broken conversion through: a wrong chat
template, EOS or BOS id, a tokenizer whose vocabulary is not the model's, or output weights lost on
the way (an untied head replaced by the embeddings) all give a file that loads and answers, badly.
Four checks, cheapest first, every number recorded:

1. metadata: the GGUF's EOS/BOS ids and chat template equal the tokenizer's (both files);
2. tokenizer: llama.cpp's ids for probe texts and rendered prompts equal the tokenizer's;
3. logits: the unquantized (f16) conversion against the merged model (transformers, float32) on
   validation prompts followed by the 16-bit model's greedy answers: top-1 agreement (a different top
   token within `gate_tie_margin` nats of the merged model's own counts as a tie, as in check 4) and the
   largest difference as a share of the logit range. f16 rounds each weight to about 3 significant digits:
   measured on a trained SmolLM2-135M, 100 % top-1 and 0.07 on a range of 72 (0.1 %); a lost output
   matrix or a wrong vocabulary moves logits by tens; 5 % of the range and 90 % top-1 sit between;
4. answers: on the same sequences (teacher forcing, so one early difference does not decide every
   later token), the quantized file's greedy choice at each answer token against the f16 file's (the
   16-bit model, as check 3 established). A different choice counts against the file only when the
   16-bit model prefers its own token by more than `gate_tie_margin` nats (ln 2: the other is less than
   half as likely); closer choices are ties any rounding may flip. Measured: a trained task190 student's
   label logits lay within 0.007-0.033 nats of each other on 4 of 10 validation prompts, so q8_0 flipped
   them (80 % exact agreement, mean KL 0.0007) and an exact-match rule rejected a faithful file; on a
   trained SmolLM2-135M, q4_k_m changed 17 of 20 whole answers (76 % of tokens), a broken file near 0 %.
   At least 85 % of answer tokens must agree (`export.quant: auto` picks q8_0 below 1B parameters).
   The mean KL divergence of the quantized file's next-token distribution from the 16-bit one is
   recorded beside it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import UserError


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
    from .gguf_import import first_tokenizer_mismatch

    if found := first_tokenizer_mismatch(tok, gguf_path, list(texts)):
        text, ours, theirs = found
        return f"the GGUF's tokenizer disagrees with the model's on {text[:30]!r} ({theirs[:8]} vs {ours[:8]})"
    return None


def _last_logits(llm):
    """The logits llama.cpp computed for the last token evaluated (the high-level API keeps them only
    with logits_all, which would compute the vocabulary projection at every prompt position)."""
    from .engine.llama import llama_cpp_module

    llama_cpp = llama_cpp_module()
    import numpy as np

    return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),)).copy()


def answer_trace(gguf_path: Path, prompt_ids: list[list[int]], n_tokens: int, follow: list[list[int]] | None = None,
                 keep: int = 0) -> tuple[list[list[int]], list]:
    """Step through each prompt's answer, recording the model's greedy choice at every step. The token fed
    next is its own choice (`follow` None: greedy decoding, stopping at end of sequence) or the given
    one (teacher forcing on another model's answer). Returns the choices per prompt and, for the first
    `keep` prompts, the logits at each step."""
    import numpy as np

    from .engine.llama import load_llama

    llm = load_llama(gguf_path, n_ctx=max(len(p) for p in prompt_ids) + n_tokens + 8, n_threads=None)
    eos = llm.token_eos()
    choices, kept = [], []
    try:
        for i, prompt in enumerate(prompt_ids):
            # validation prompts share the instruction and demonstrations: keep that prefix's KV cache
            # (eval drops the cache beyond n_tokens) and evaluate only what differs
            previous = llm.input_ids[: llm.n_tokens].tolist()
            shared = next((j for j, (a, b) in enumerate(zip(previous, prompt, strict=False)) if a != b), min(len(previous), len(prompt)))
            llm.n_tokens = min(shared, len(prompt) - 1)
            llm.eval(prompt[llm.n_tokens:])
            mine, rows = [], []
            steps = n_tokens if follow is None else len(follow[i])
            for step in range(steps):
                logits = _last_logits(llm)
                mine.append(int(logits.argmax()))
                if i < keep:
                    rows.append(logits)
                fed = mine[-1] if follow is None else follow[i][step]
                if (follow is None and fed == eos) or step + 1 == steps:
                    break
                llm.eval([fed])
            choices.append(mine)
            if i < keep:
                kept.append(np.stack(rows))
    finally:
        llm.close()
    return choices, kept


def _log_softmax(rows):
    import numpy as np

    x = np.asarray(rows, dtype=np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def compare_answers(reference: list[list[int]], quantized: list[list[int]], reference_rows: Sequence,
                    quantized_rows: Sequence, tie_margin: float) -> dict[str, Any]:
    """Check 4's numbers. `reference`: the 16-bit model's greedy tokens per prompt; `quantized`: the
    quantized file's choices at the same steps (teacher-forced); the rows are each side's logits there.
    A choice agrees when it is the 16-bit one or the 16-bit model rates it within `tie_margin` nats."""
    import numpy as np

    tokens = same = ties = 0
    whole = 0
    kl: list[float] = []
    for ref, mine, r_rows, q_rows in zip(reference, quantized, reference_rows, quantized_rows, strict=True):
        lp, lq = _log_softmax(r_rows), _log_softmax(q_rows)
        kl += (np.exp(lp) * (lp - lq)).sum(axis=-1).tolist()
        equal, near = _same_or_near_tie(lp[:len(ref)], ref, mine, tie_margin)
        tokens, same, ties = tokens + len(ref), same + int(equal.sum()), ties + int(near.sum())
        whole += bool((equal | near).all())
    return {"prompts": len(reference), "answer_tokens": tokens, "token_agreement": (same + ties) / max(tokens, 1),
            "exact_token_agreement": same / max(tokens, 1), "ties": ties, "agree": whole,
            "mean_kl": float(np.mean(kl)) if kl else 0.0}


def top1_matches(reference_rows, other_rows, tie_margin: float) -> tuple[int, int]:
    """Positions (rows of logits) where the two top tokens are equal, and where they differ by a near tie:
    the reference rates the other's top token within `tie_margin` nats of its own."""
    import numpy as np

    mine, theirs = np.asarray(reference_rows).argmax(-1), np.asarray(other_rows).argmax(-1)
    equal, near = _same_or_near_tie(_log_softmax(reference_rows), mine, theirs, tie_margin)
    return int(equal.sum()), int(near.sum())


def _same_or_near_tie(log_probs, mine, theirs, tie_margin: float):
    """The one tie rule of checks 3 and 4, per position: the two tokens are equal, or they differ and the
    reference (`log_probs`, its log-probabilities) rates `theirs` within `tie_margin` nats of `mine`."""
    import numpy as np

    mine, theirs = np.asarray(mine, dtype=int), np.asarray(theirs, dtype=int)
    steps = np.arange(len(mine))
    equal = mine == theirs
    return equal, ~equal & (log_probs[steps, mine] - log_probs[steps, theirs] <= tie_margin)


def merged_logit_agreement(merged_dir: Path, prompt_ids: list[list[int]], answers: list[list[int]],
                           f16_rows: list, tie_margin: float) -> dict[str, Any]:
    """The merged 16-bit model's logits along the f16 conversion's greedy answers, against the f16 file's
    own (`f16_rows`, one array per prompt): top-1 agreement and the largest difference. A position where
    the two top tokens differ agrees when the merged model rates the f16 file's choice within `tie_margin`
    nats of its own (a near tie f16 rounding may flip: seen on Gemma 3 270M, 5 of 6 positions equal with
    the largest difference 0.02 on a range of 47, which rejected a faithful file)."""
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32)
    model.eval()
    agree = ties = total = 0
    max_diff, lo, hi = 0.0, float("inf"), float("-inf")
    for prompt, answer, theirs in zip(prompt_ids, answers, f16_rows, strict=False):
        seq = prompt + answer[:-1]  # step j's logits come after the prompt and the first j answer tokens
        with torch.no_grad():
            ours = model(torch.tensor([seq])).logits[0, len(prompt) - 1:].float().numpy()
        same, near = top1_matches(ours, theirs, tie_margin)
        agree, ties, total = agree + same, ties + near, total + len(theirs)
        max_diff = max(max_diff, float(np.abs(ours - theirs).max()))
        lo, hi = min(lo, float(theirs.min())), max(hi, float(theirs.max()))
    del model
    return {"positions": total, "top1_agreement": (agree + ties) / total, "exact_top1_agreement": agree / total,
            "ties": ties, "max_abs_logit_diff": max_diff,
            "logit_range": hi - lo, "max_diff_share_of_range": max_diff / max(hi - lo, 1e-6)}


def check_export(merged_dir: Path, f16_gguf: Path, quant_gguf: Path, user_texts: Sequence[str], cfg,
                 use_chat_template: bool = True) -> dict[str, Any]:
    """Run the four checks; returns their numbers, or raises ExportRejected naming what differs.

    `user_texts`: validation prompts (user text, before rendering); `cfg`: the ExportConfig."""
    from .hf_tokenizer import load_tokenizer
    from .progress import quiet_libraries
    from .prompts import PromptFormat

    quiet_libraries()
    t0 = time.monotonic()
    tok = load_tokenizer(merged_dir)
    fmt = PromptFormat.from_tokenizer(tok, use_chat_template)
    problems: list[str] = []
    for path in dict.fromkeys([f16_gguf, quant_gguf]):
        problems += [p for p in metadata_problems(tok, path) if p not in problems]
    rendered = [fmt.render(t) for t in user_texts] or [fmt.render("Hello")]
    from .gguf_import import PROBE_TEXTS

    if bad := tokenizer_problem(tok, quant_gguf, [*PROBE_TEXTS, *rendered[:3]]):
        problems.append(bad)

    # 3. logits: the f16 conversion's greedy answers, and the merged model's logits along them
    from .engine.llama import gguf_tokenize_all

    prompt_ids = gguf_tokenize_all(f16_gguf, rendered)
    n_full = min(3, len(prompt_ids))
    answers, answer_rows = answer_trace(f16_gguf, prompt_ids, cfg.gate_answer_tokens, keep=len(prompt_ids))
    logits = merged_logit_agreement(merged_dir, prompt_ids, answers, answer_rows[:n_full], cfg.gate_tie_margin)
    record: dict[str, Any] = {"logits": {"prompts": n_full, **logits}}
    if logits["top1_agreement"] < cfg.gate_min_top1 or logits["max_diff_share_of_range"] > cfg.gate_max_logit_diff:
        problems.append(f"logits of the f16 conversion differ from the merged model (top-1 agreement "
                        f"{logits['top1_agreement']:.0%}, largest difference {logits['max_abs_logit_diff']:.2f} = "
                        f"{logits['max_diff_share_of_range']:.1%} of the logit range)")

    # 4. answers: the quantized file's greedy choice at every step of the 16-bit model's answers
    if quant_gguf != f16_gguf:
        got, quant_rows = answer_trace(quant_gguf, prompt_ids, cfg.gate_answer_tokens, follow=answers, keep=len(prompt_ids))
        record["answers"] = compare_answers(answers, got, answer_rows, quant_rows, cfg.gate_tie_margin)
        agreement = record["answers"]["token_agreement"]
        if agreement < cfg.gate_min_agreement:
            a = record["answers"]
            problems.append(f"the quantized file's greedy choices agree with the 16-bit model's on {agreement:.0%} "
                            f"of answer tokens ({a['agree']}/{a['prompts']} validation answers unchanged; differences "
                            f"within {cfg.gate_tie_margin:.2f} nats count as ties; at least "
                            f"{cfg.gate_min_agreement:.0%} of tokens needed)")
    record.update(passed=not problems, problems=problems, seconds=round(time.monotonic() - t0, 2))
    if problems:
        raise ExportRejected(f"{quant_gguf.name} failed the export check: {'; '.join(problems)}", record)
    return record


def gate_line(gate: dict[str, Any]) -> str:
    """The export check's record in one log line."""
    logits, answers = gate.get("logits") or {}, gate.get("answers")
    parts = [f"f16 logits: top-1 {logits.get('top1_agreement', 0):.0%}, largest difference "
             f"{logits.get('max_diff_share_of_range', 0):.2%} of the range"]
    if answers:
        parts.append(f"quantized file chooses as the 16-bit model on {answers['token_agreement']:.0%} of answer tokens "
                     f"({answers.get('ties', 0)} ties), {answers['agree']}/{answers['prompts']} answers unchanged")
    return "; ".join(parts) + f"; {gate.get('seconds', 0):.0f}s"
