"""llama.cpp through llama-cpp-python's high-level `Llama.create_completion`: one sequence at a time.

Simple and a correctness reference for the batched engine (greedy outputs must match token for
token). It reuses the KV cache of the longest common prefix with the previous call, which is all
the prefix sharing a serial decoder can do.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .. import progress
from ..errors import UserError
from .llama import llama_cpp_module, load_llama, model_info
from .sampler import Completion, Request, Sampler, ScoreRequest, choices_grammar, logsumexp, score_split


class LlamaCppSampler(Sampler):
    """Sequential sampling with `Llama.create_completion`."""

    scores_labels = True

    def __init__(self, model_path: str | Path, n_ctx: int = 4096, n_threads: int | None = None) -> None:
        self.llama = load_llama(model_path, n_ctx, n_threads)
        self.info = model_info(self.llama.model)

    def count_tokens(self, text: str) -> int:
        return len(self.llama.tokenize(text.encode("utf-8"), add_bos=False, special=True))

    def _complete(self, prompt: str, params, seed: int) -> Completion:
        grammar = llama_cpp_module().LlamaGrammar.from_string(choices_grammar(params.choices), verbose=False) if params.choices else None
        logit_bias = {self.llama.token_eos(): float("-inf")} if params.ignore_eos else None
        out = self.llama.create_completion(
            prompt,
            max_tokens=params.max_tokens,
            temperature=params.temperature,
            top_k=params.top_k,
            top_p=params.top_p,
            min_p=params.min_p,
            stop=list(params.stop) or None,
            seed=seed,
            repeat_penalty=params.repeat_penalty,
            presence_penalty=params.presence_penalty,
            frequency_penalty=params.frequency_penalty,
            grammar=grammar,
            logit_bias=logit_bias,
        )
        choice = out["choices"][0]
        return Completion(
            text=choice["text"],
            n_tokens=out["usage"]["completion_tokens"],
            finish_reason="length" if choice["finish_reason"] == "length" else "stop",
        )

    def generate(self, requests: Sequence[Request]) -> list[list[Completion]]:
        results = []
        for req in requests:
            n_prompt = self.count_tokens(req.prompt) + 1
            if n_prompt + req.params.max_tokens > self.llama.n_ctx():
                raise UserError(
                    f"prompt of {n_prompt} tokens + {req.params.max_tokens} new tokens exceeds the context "
                    f"({self.llama.n_ctx()}); raise engine.n_ctx"
                )
            samples = []
            for i in range(req.params.n):
                samples.append(self._complete(req.prompt, req.params, req.params.seed + i))
                progress.sample_done()
            results.append(samples)
        return results

    def score(self, requests: Sequence[ScoreRequest]) -> list[list[float]]:
        """One token at a time after the split, reading the last token's logits after each `eval`: slow,
        and the reference the batched engine is checked against. (`Llama.scores` holds rows only when
        the model is loaded with logits_all, which sampling does not want, so the row is read from the
        context directly.)"""
        llm = self.llama
        n_vocab = llm.n_vocab()
        out = []
        for req in requests:
            prompt = llm.tokenize(req.prompt.encode("utf-8"), add_bos=True, special=True)
            seqs = [llm.tokenize((req.prompt + c).encode("utf-8"), add_bos=True, special=True) for c in req.continuations]
            split = score_split(prompt, seqs)
            scores = []
            for seq in seqs:
                if len(seq) > llm.n_ctx():
                    raise UserError(f"prompt + continuation of {len(seq)} tokens exceeds the context ({llm.n_ctx()})")
                llm.reset()
                llm.eval(seq[:split])
                total = 0.0
                for token in seq[split:]:
                    row = np.ctypeslib.as_array(llm._ctx.get_logits_ith(-1), shape=(n_vocab,)).astype(np.float64)
                    total += float(row[token]) - logsumexp(row)
                    llm.eval([token])
                scores.append(total)
            out.append(scores)
        return out

    def close(self) -> None:
        self.llama.close()
