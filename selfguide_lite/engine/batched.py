"""Batched sampling on llama.cpp's low-level API: many sequences per `llama_decode` call.

`Llama.create_completion` decodes one sequence at a time, so on a CPU every forward pass streams all
weights for a single token. Here one context holds `n_parallel` sequence slots and every step
submits one `llama_batch` with the next token of every live sequence plus prefill chunks of newly
admitted prompts; a finished slot is refilled from the queue at once (continuous batching). Weights
are read once per step for all sequences, which is where the speed-up comes from.

Each slot has its own KV stream (`kv_unified = false`). In a unified cache every query attends over
every sequence's cells and masks the others out, which on a CPU costs as much as the weights once 16
sequences hold a few hundred tokens each; flash attention would skip the masked cells, but its f16
accumulation makes logits depend on batch composition at the 1e-3 level, and sampled text with it.
Separate streams keep attention per sequence and results independent of what is decoded beside it.
llama.cpp splits a batch into one forward pass per run of consecutive sequence ids, so tokens go in
slot order and live sequences are kept packed in the lowest slots.

Prefill is shared wherever the prompts allow it, because Self-Guide prompts repeat a long
instruction + few-shot block and ask for many samples of one prompt:
- the longest common token prefix of all prompts of a call lives in its own stream (the last
  slot), is computed once, kept across calls while it still matches, and copied into a slot's
  stream (`llama_memory_seq_cp`) when a request is admitted;
- the `n` samples of one request are prefilled once: samples admitted together sample their first
  token from the same logits row; samples admitted later copy the prompt's KV from a sibling and
  draw their first token from a saved copy of that row, so they compute nothing either;
- samples of one request whose tokens so far are equal (twins; the vote's ten samples at temperature 0.2
  mostly are) are decoded once: each draws its next token from the fed one's logits row with its own chain,
  and one that draws another token gets the KV and is fed from then on. A request's samples are admitted
  together, so they can be twins.

Every sample has its own sampler chain seeded with `params.seed + i`, so what a sample draws does not
depend on which slot it lands in or on what is decoded beside it. The chain mirrors the one
llama-cpp-python builds (penalties, grammar, top-k, top-p, min-p, temperature, dist / greedy), so
greedy output equals `LlamaCppSampler` token for token. Classification (`params.choices`) uses a
GBNF grammar, applied only to the few tokens whose text can occur in a choice: a grammar over a
32k-token candidate list costs milliseconds per token, more than a small model's forward pass. (The
subset is handed to the chain unsorted; masking with top-k first would leave the array flagged as
sorted after the grammar rejects tokens, and llama.cpp's softmax then trusts a stale maximum.)
"""

from __future__ import annotations

import ctypes
import os
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import progress
from ..errors import UserError
from ..gguf_files import existing_gguf
from .llama import llama_cpp_module, load_model, model_info
from .sampler import (
    Completion,
    Request,
    Sampler,
    SamplingParams,
    ScoreRequest,
    choices_grammar,
    common_prefix,
    common_prefix_all,
    logsumexp,
    score_split,
    settled_text,
    truncate_at_stop,
)

PENALTY_LAST_N = 64  # llama-cpp-python's default last_n_tokens_size: penalties match the sequential backend
KV_BUDGET_BYTES = 3 << 30  # cap on the KV cache; beyond it fewer sequences run at once instead of failing
FLASH_ATTN = False  # see the module docstring: faster, but not batch-invariant
MIN_SHARED_PREFIX = 4  # a shorter common prefix is not worth a sequence of its own
WHITESPACE = (" ", "\t", "\n")  # what choices_grammar allows before a choice
NO_KV = -1  # `_BatchRun.dirty` value of a free slot whose stream holds no request's prompt: cleared before use


@dataclass(eq=False)
class _Seq:
    """One sample being decoded in a slot (or, as a twin, riding on another sample's decode)."""

    req: int
    index: int  # sample index within the request (seed offset)
    slot: int
    chain: object  # llama_sampler pointer
    prompt_len: int
    limit: int  # max new tokens
    pending: list[int] = field(default_factory=list)  # prompt tokens still to prefill (leaders only)
    pos: int = 0  # position of the next token fed to the model
    next_token: int | None = None
    leader: _Seq | None = None  # set while waiting for the leader's prefill
    followers: list[_Seq] = field(default_factory=list)
    # Twins: samples of the same request whose tokens so far are this one's. Only one of them is decoded;
    # each draws its next token from that one's logits row with its own chain, and a twin that draws a
    # different token gets the KV (a stream copy) and is decoded from then on. A twin's slot holds no KV.
    twin_of: _Seq | None = None
    twins: list[_Seq] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    data: bytearray = field(default_factory=bytearray)


@dataclass
class _Job:
    """Per-request data shared by its samples."""

    params: SamplingParams
    tokens: list[int]
    limit: int
    terminal: frozenset[str] = frozenset()  # choices no other choice extends: reaching one ends the sample
    allowed: np.ndarray | None = None  # candidate token ids for choices
    next_index: int = 0
    first_logits: np.ndarray | None = None  # logits after the prompt, kept while samples wait for a slot


class BatchedSampler(Sampler):
    """Continuous batching of many sequences over one llama.cpp context (see module docstring)."""

    scores_labels = True
    share_twins = True  # decode identical samples once (`_Seq.twins`); benchmarks switch it off to compare

    def __init__(self, model_path: str | Path, n_ctx: int = 4096, n_threads: int | None = None, n_parallel: int = 64) -> None:
        L = llama_cpp_module()
        self._L = L
        path = existing_gguf(model_path)
        if n_parallel < 1 or n_parallel + 1 > L.llama_max_parallel_sequences():
            raise UserError(f"n_parallel must be between 1 and {L.llama_max_parallel_sequences() - 1}, got {n_parallel}")
        if n_ctx < 16:
            raise UserError(f"n_ctx must be at least 16, got {n_ctx}")
        self._model = load_model(path)
        self._ctx = None
        self._chains: list = []
        self.n_ctx = n_ctx  # per-sequence window: prompt + new tokens must fit, as for the sequential backend
        self.n_parallel = n_parallel
        self.n_threads = n_threads or os.cpu_count() or 1
        self.n_batch = 512
        self.flash_attn = FLASH_ATTN
        self.n_slots = n_parallel  # slots in use: fewer when the KV budget cannot hold n_parallel streams
        self._prefix_seq = n_parallel
        self._prefix: list[int] = []  # tokens held by the prefix stream, kept across calls
        self._stream_cells = 0
        self._vocab = L.llama_model_get_vocab(self._model)
        self.n_vocab = L.llama_vocab_n_tokens(self._vocab)
        self._pieces = [self._piece(t) for t in range(self.n_vocab)]
        self._eog = frozenset(t for t in range(self.n_vocab) if L.llama_vocab_is_eog(self._vocab, t))
        bos = L.llama_vocab_bos(self._vocab)  # llama.cpp folded CLS into BOS
        self._bos = [bos] if L.llama_vocab_get_add_bos(self._vocab) and bos != -1 else []
        n_embd, n_head = L.llama_model_n_embd(self._model), max(1, L.llama_model_n_head(self._model))
        n_kv_embd = n_embd // n_head * L.llama_model_n_head_kv(self._model)
        self._bytes_per_cell = 2 * 2 * L.llama_model_n_layer(self._model) * n_kv_embd  # K and V, f16
        self._choice_ids: dict[tuple[str, ...], np.ndarray] = {}
        self._cand = np.zeros(self.n_vocab, dtype=np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)]))
        self._cand_ptr = self._cand.ctypes.data_as(ctypes.POINTER(L.llama_token_data))
        self._all_ids = np.arange(self.n_vocab, dtype=np.int32)
        self._eog_bias = self._bias_array(sorted(self._eog))
        self.info = model_info(self._model)
        # token counts, and where the wall time goes (seconds inside llama_decode and inside the sampler
        # chains; the rest is Python bookkeeping): scripts/bench_sampling.py profiles the engine with them
        self.stats = {"prefill_requested": 0, "prefill_unique": 0, "prefill_computed": 0, "generated": 0, "decode_calls": 0,
                      "decode_seconds": 0.0, "sample_seconds": 0.0, "generate_seconds": 0.0,
                      # decode calls with one generated token per sequence and nothing else: no prompt
                      # tokens and no KV stream copies (llama.cpp runs queued copies inside llama_decode)
                      "plain_decode_seconds": 0.0, "plain_decode_tokens": 0,
                      # generated tokens a twin drew from another sample's logits row: not decoded
                      "twin_tokens": 0}
        self._copied = False  # a KV stream copy was queued since the last llama_decode
        self.last_stats = dict(self.stats)
        self._init_batch()

    # --- model facts ---------------------------------------------------------------------------

    def _piece(self, token: int) -> bytes:
        buf = ctypes.create_string_buffer(64)
        n = self._L.llama_token_to_piece(self._vocab, token, buf, 64, 0, False)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = self._L.llama_token_to_piece(self._vocab, token, buf, -n, 0, False)
        return buf.raw[:n]

    def _tokenize(self, text: str) -> list[int]:
        data = text.encode("utf-8")
        cap = len(data) + 8
        buf = (self._L.llama_token * cap)()
        n = self._L.llama_tokenize(self._vocab, data, len(data), buf, cap, False, True)
        if n < 0:
            cap = -n
            buf = (self._L.llama_token * cap)()
            n = self._L.llama_tokenize(self._vocab, data, len(data), buf, cap, False, True)
        return list(buf[:n])

    def count_tokens(self, text: str) -> int:
        return len(self._tokenize(text))

    def prompt_tokens(self, prompt: str) -> list[int]:
        """The tokens a prompt is decoded from: BOS per the vocabulary, then the text with special tokens parsed,
        exactly as `Llama.create_completion` builds them."""
        return self._bos + self._tokenize(prompt)

    # --- context and batch ---------------------------------------------------------------------

    def _ensure_context(self, per_seq: int) -> None:
        """A context whose streams hold `per_seq` cells each: recreated when too small, or much larger
        than needed (copying a stream copies all of it)."""
        L = self._L
        per_seq = -(-per_seq // 256) * 256
        n_slots = max(1, min(self.n_parallel, KV_BUDGET_BYTES // (per_seq * self._bytes_per_cell) - 1))
        if self._ctx is not None and per_seq <= self._stream_cells < 4 * per_seq and self.n_slots >= n_slots:
            return
        if self._ctx is not None:
            L.llama_free(self._ctx)
            self._ctx = None
        params = L.llama_context_default_params()
        params.n_ctx = (n_slots + 1) * per_seq
        params.n_batch = self.n_batch
        params.n_ubatch = self.n_batch
        params.n_seq_max = n_slots + 1
        params.n_threads = self.n_threads
        params.n_threads_batch = self.n_threads
        params.kv_unified = False
        params.flash_attn_type = L.LLAMA_FLASH_ATTN_TYPE_ENABLED if self.flash_attn else L.LLAMA_FLASH_ATTN_TYPE_DISABLED
        params.no_perf = True
        ctx = L.llama_init_from_model(self._model, params)
        if not ctx:
            raise RuntimeError(f"llama.cpp could not create a context of {n_slots + 1} x {per_seq} KV cells")
        self._ctx = ctx
        self._mem = L.llama_get_memory(ctx)
        self._stream_cells = L.llama_n_ctx_seq(ctx)
        self.n_slots = n_slots
        self._prefix_seq = n_slots
        self._prefix = []

    def _init_batch(self) -> None:
        """A llama_batch over numpy arrays, so filling it costs slice assignments, not ctypes calls per field."""
        L, n = self._L, self.n_batch
        self._b_tok = np.zeros(n, np.int32)
        self._b_pos = np.zeros(n, np.int32)
        self._b_nseq = np.ones(n, np.int32)
        self._b_seq = np.zeros(n, np.int32)
        self._b_logits = np.zeros(n, np.int8)
        ptr = ctypes.POINTER(L.llama_seq_id)
        self._b_seq_ptrs = (ptr * n)(*[ctypes.cast(self._b_seq.ctypes.data + 4 * i, ptr) for i in range(n)])
        self._batch = L.llama_batch(
            n_tokens=0,
            token=self._b_tok.ctypes.data_as(ctypes.POINTER(L.llama_token)),
            embd=None,
            pos=self._b_pos.ctypes.data_as(ctypes.POINTER(L.llama_pos)),
            n_seq_id=self._b_nseq.ctypes.data_as(ctypes.POINTER(ctypes.c_int32)),
            seq_id=self._b_seq_ptrs,
            logits=self._b_logits.ctypes.data_as(ctypes.POINTER(ctypes.c_int8)),
        )

    def _decode(self, n_tokens: int, generated_only: bool = False) -> None:
        self._batch.n_tokens = n_tokens
        start = time.perf_counter()
        rc = self._L.llama_decode(self._ctx, self._batch)
        seconds = time.perf_counter() - start
        self.stats["decode_seconds"] += seconds
        if generated_only and not self._copied:
            self.stats["plain_decode_seconds"] += seconds
            self.stats["plain_decode_tokens"] += n_tokens
        self._copied = False
        self.stats["decode_calls"] += 1
        if rc != 0:
            raise RuntimeError(f"llama_decode failed with code {rc} ({n_tokens} tokens, {self._stream_cells} KV cells per stream)")

    def _prefill_prefix(self, prefix: list[int]) -> int:
        """Make the prefix sequence hold exactly `prefix`, computing only what the previous call did not leave."""
        L = self._L
        keep = common_prefix(self._prefix, prefix)
        if keep < len(self._prefix):
            L.llama_memory_seq_rm(self._mem, self._prefix_seq, keep, -1)
        self._prefix = self._prefix[:keep]
        computed = 0
        for start in range(keep, len(prefix), self.n_batch):
            chunk = prefix[start:start + self.n_batch]
            n = len(chunk)
            self._b_tok[:n] = chunk
            self._b_pos[:n] = np.arange(start, start + n, dtype=np.int32)
            self._b_seq[:n] = self._prefix_seq
            self._b_logits[:n] = 0
            self._decode(n)
            computed += n
            self._prefix = prefix[:start + n]
        return computed

    # --- sampler chains ------------------------------------------------------------------------

    def _bias_array(self, tokens: Sequence[int]):
        arr = (self._L.llama_logit_bias * len(tokens))()
        for i, t in enumerate(tokens):
            arr[i].token = t
            arr[i].bias = float("-inf")
        return arr

    def _choice_tokens(self, choices: tuple[str, ...]) -> np.ndarray:
        """Every token whose text can occur inside `[ws]? choice`, plus end-of-generation: a superset of
        what the grammar can ever accept, so restricting candidates to it changes no outcome."""
        if choices not in self._choice_ids:
            variants = [(w + c).encode("utf-8") for c in choices for w in ("", *WHITESPACE)]
            allowed = {t for t, p in enumerate(self._pieces) if p and any(p in v for v in variants)} | self._eog
            self._choice_ids[choices] = np.array(sorted(allowed), dtype=np.int32)
        return self._choice_ids[choices]

    def _sample_row(self, chain, logits: np.ndarray, ids: np.ndarray | None) -> int:
        """What llama_sampler_sample does, on a logits row we hold and optionally a subset of candidates."""
        L, cand = self._L, self._cand
        start = time.perf_counter()
        if ids is None:
            n = self.n_vocab
            cand["id"] = self._all_ids
            cand["logit"] = logits
        else:
            n = len(ids)
            cand["id"][:n] = ids
            cand["logit"][:n] = logits[ids]
        cand["p"][:n] = 0.0
        arr = L.llama_token_data_array(data=self._cand_ptr, size=n, selected=-1, sorted=False)
        L.llama_sampler_apply(chain, ctypes.byref(arr))
        if not 0 <= arr.selected < arr.size:
            raise RuntimeError("sampler chain selected no token")
        token = int(arr.data[arr.selected].id)
        L.llama_sampler_accept(chain, token)
        self.stats["sample_seconds"] += time.perf_counter() - start
        return token

    def _logits(self, idx: int) -> np.ndarray:
        return np.ctypeslib.as_array(self._L.llama_get_logits_ith(self._ctx, idx), shape=(self.n_vocab,))

    def _make_chain(self, params: SamplingParams, seed: int):
        L = self._L
        chain = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())
        self._chains.append(chain)

        def add(smpl) -> None:
            L.llama_sampler_chain_add(chain, smpl)

        if params.ignore_eos and self._eog and not params.choices:
            add(L.llama_sampler_init_logit_bias(self.n_vocab, len(self._eog_bias), self._eog_bias))
        if params.repeat_penalty != 1.0 or params.frequency_penalty or params.presence_penalty:
            add(L.llama_sampler_init_penalties(self.n_vocab, PENALTY_LAST_N, params.repeat_penalty,
                                               params.frequency_penalty, params.presence_penalty))
        if params.choices:
            grammar = L.llama_sampler_init_grammar(self._vocab, choices_grammar(params.choices).encode("utf-8"), b"root")
            if not grammar:
                raise UserError(f"cannot build a grammar for the choices {list(params.choices)!r}")
            add(grammar)
        seed &= 0xFFFFFFFF
        if params.temperature == 0:
            add(L.llama_sampler_init_greedy())
        elif params.temperature < 0:
            add(L.llama_sampler_init_dist(seed))
        else:
            add(L.llama_sampler_init_top_k(params.top_k))
            add(L.llama_sampler_init_top_p(params.top_p, 1))
            add(L.llama_sampler_init_min_p(params.min_p, 1))
            add(L.llama_sampler_init_temp(params.temperature))
            add(L.llama_sampler_init_dist(seed))
        return chain

    def _free_chain(self, chain) -> None:
        self._L.llama_sampler_free(chain)
        self._chains.remove(chain)

    # --- generation ----------------------------------------------------------------------------

    def _jobs(self, requests: Sequence[Request]) -> list[_Job]:
        jobs = []
        for req in requests:
            p = req.params
            tokens = self.prompt_tokens(req.prompt)
            if not tokens:
                raise UserError("empty prompt: the model adds no BOS token, so there is nothing to decode")
            limit, terminal, allowed = max(p.max_tokens, 0), frozenset(), None
            if p.choices:
                if not all(p.choices):
                    raise UserError("choices must be non-empty strings")
                # every token adds at least one byte, so this many tokens always reach the end of a choice
                limit = max(limit, max(len(c.encode("utf-8")) for c in p.choices) + 2)
                terminal = frozenset(c for c in p.choices if not any(o != c and o.startswith(c) for o in p.choices))
                allowed = self._choice_tokens(tuple(p.choices))
            if len(tokens) + limit > self.n_ctx:
                raise UserError(
                    f"prompt of {len(tokens)} tokens + {limit} new tokens exceeds the context ({self.n_ctx}); "
                    "raise engine.n_ctx or shorten the prompt"
                )
            jobs.append(_Job(params=p, tokens=tokens, limit=limit, terminal=terminal, allowed=allowed))
        return jobs

    def generate(self, requests: Sequence[Request]) -> list[list[Completion]]:
        started = time.perf_counter()
        jobs = self._jobs(requests)
        results: list[list[Completion | None]] = [[None] * max(job.params.n, 0) for job in jobs]
        for i, job in enumerate(jobs):
            if job.limit == 0:
                results[i] = [Completion(text="", n_tokens=0, finish_reason="length")] * job.params.n
        live_jobs = [j for j in jobs if j.params.n > 0 and j.limit > 0]
        if not live_jobs:
            return results  # type: ignore[return-value]
        before = dict(self.stats)
        prompts = [j.tokens for j in live_jobs]
        shared = min(common_prefix_all(prompts), min(len(t) for t in prompts) - 1)
        shared = shared if shared >= MIN_SHARED_PREFIX else 0
        self.stats["prefill_requested"] += sum(len(j.tokens) * j.params.n for j in live_jobs)
        self.stats["prefill_unique"] += _trie_size(prompts)

        self._ensure_context(max(len(j.tokens) + j.limit for j in live_jobs))
        if shared:
            self.stats["prefill_computed"] += self._prefill_prefix(prompts[0][:shared])
        elif self._prefix:
            self._L.llama_memory_seq_rm(self._mem, self._prefix_seq, -1, -1)
            self._prefix = []
        try:
            self._run(live_jobs, jobs, results, shared)
        finally:
            for chain in list(self._chains):
                self._free_chain(chain)
            for slot in range(self.n_slots):
                self._L.llama_memory_seq_rm(self._mem, slot, -1, -1)
        self.stats["generate_seconds"] += time.perf_counter() - started
        self.last_stats = {k: self.stats[k] - before[k] for k in self.stats}
        return results  # type: ignore[return-value]

    # --- scoring continuations (label log-probabilities) -----------------------------------------

    def score(self, requests: Sequence[ScoreRequest]) -> list[list[float]]:
        """Batched like `generate`: the common prefix of all prompts is computed once (the prefix stream),
        each prompt's own part once in a slot of its own, then its continuations one after another, each
        continuation's KV dropped before the next. Rows come from batched decodes: equal to single-sequence
        log-probabilities within float tolerance, not bitwise (tests/test_engine_batched.py states it)."""
        return self._score(requests)

    def score_and_generate(self, scores: Sequence[ScoreRequest],
                           requests: Sequence[Request]) -> tuple[list[list[float]], list[list[Completion]]]:
        """Label scores and label-constrained samples of the same prompts (the signal check's vote beside
        its score labellers) with each prompt computed once: a sample's first token is drawn from the
        scoring pass's logits after the prompt, with the chain `generate` would use (seed + i), and a
        sample that token settles (`settled_choice`) is finished. That row equals `generate`'s within float
        tolerance, not bitwise (batched decodes; see `score`). A request with any unsettled sample, or whose
        prompt's tokens do not begin its continuations', is sampled by `generate` in full."""
        fusable = len(scores) == len(requests) and all(
            r.params.choices and r.params.n > 0 and r.prompt == s.prompt for r, s in zip(requests, scores, strict=True))
        if not fusable:
            return self._score(scores), self.generate(requests)
        drawn: dict[int, list[Completion]] = {}

        def on_prompt(j: int, row: np.ndarray) -> None:
            params = requests[j].params
            allowed = self._choice_tokens(tuple(params.choices))
            out = []
            for i in range(params.n):
                chain = self._make_chain(params, params.seed + i)
                try:
                    token = self._sample_row(chain, row, allowed)
                finally:
                    self._free_chain(chain)
                self.stats["generated"] += 1
                done = settled_choice(self._pieces[token].decode("utf-8", errors="ignore"), params.choices)
                if done is None or token in self._eog:
                    return  # not settled by its first token: `generate` samples this request
                out.append(Completion(text=done, n_tokens=1, finish_reason="stop"))
                progress.sample_done()
            drawn[j] = out

        scored = self._score(scores, on_prompt)
        rest = [j for j in range(len(requests)) if j not in drawn]
        for j, completions in zip(rest, self.generate([requests[j] for j in rest]) if rest else [], strict=True):
            drawn[j] = completions
        return scored, [drawn[j] for j in range(len(requests))]

    def _score(self, requests: Sequence[ScoreRequest], on_prompt=None) -> list[list[float]]:
        """`score`; `on_prompt(j, logits)`, when given, also receives request j's logits row after its whole
        prompt (only where the prompt's tokens begin every continuation's)."""
        if not requests:
            return []
        seqs = [[self.prompt_tokens(r.prompt + c) for c in r.continuations] for r in requests]
        prompts = [self.prompt_tokens(r.prompt) for r in requests]
        splits = [score_split(p, s) for p, s in zip(prompts, seqs, strict=True)]
        every = [x for s in seqs for x in s]
        if not every:
            return [[] for _ in requests]
        longest = max(len(x) for x in every)
        if longest > self.n_ctx:
            raise UserError(f"prompt + continuation of {longest} tokens exceeds the context ({self.n_ctx}); raise engine.n_ctx")
        shared = min(common_prefix_all(every), min(sp for sp, s in zip(splits, seqs, strict=True) if s) - 1)
        shared = shared if shared >= MIN_SHARED_PREFIX else 0
        self._ensure_context(longest)
        if shared:
            self.stats["prefill_computed"] += self._prefill_prefix(every[0][:shared])
        elif self._prefix:
            self._L.llama_memory_seq_rm(self._mem, self._prefix_seq, -1, -1)
            self._prefix = []
        scores = [[0.0] * len(s) for s in seqs]
        whole_prompt = None
        if on_prompt is not None:  # the row after the prompt is the one `generate` samples from only here
            whole_prompt = {j for j, p in enumerate(prompts) if seqs[j] and splits[j] == len(p)}
        try:
            for start in range(0, len(requests), self.n_slots):
                group = [j for j in range(start, min(len(requests), start + self.n_slots)) if seqs[j]]
                self._score_group(group, seqs, splits, shared, scores,
                                  (lambda j, row: on_prompt(j, row) if j in whole_prompt else None) if on_prompt else None)
        finally:
            for slot in range(self.n_slots):
                self._L.llama_memory_seq_rm(self._mem, slot, -1, -1)
        return scores

    def _score_group(self, group: list[int], seqs: list[list[list[int]]], splits: list[int], shared: int,
                     scores: list[list[float]], on_prompt=None) -> None:
        """Requests `group` (one slot each): their prompt parts in one pass, then continuation i of all of them."""
        L = self._L
        slot_of = {j: slot for slot, j in enumerate(group)}

        def first_token(slot: int, pos: int, row: np.ndarray) -> None:
            j = group[slot]
            if on_prompt is not None:
                on_prompt(j, row)
            lse = logsumexp(row)
            for i, seq in enumerate(seqs[j]):
                if len(seq) > splits[j]:
                    scores[j][i] += float(row[seq[splits[j]]]) - lse

        prompt_parts = []
        for j in group:
            L.llama_memory_seq_rm(self._mem, slot_of[j], -1, -1)  # the previous group's prompt
            if shared:
                L.llama_memory_seq_cp(self._mem, self._prefix_seq, slot_of[j], -1, -1)
                self._copied = True
            prompt_parts.append((slot_of[j], seqs[j][0][shared:splits[j]], shared, {splits[j] - 1}))
        self._decode_parts(prompt_parts, first_token)
        for i in range(max(len(seqs[j]) for j in group)):
            tails = {j: seqs[j][i] for j in group if i < len(seqs[j]) and len(seqs[j][i]) > splits[j] + 1}

            def tail_token(slot: int, pos: int, row: np.ndarray, i: int = i) -> None:
                seq = seqs[group[slot]][i]
                scores[group[slot]][i] += float(row[seq[pos + 1]]) - logsumexp(row)

            self._decode_parts([(slot_of[j], seq[splits[j]:-1], splits[j], set(range(splits[j], len(seq) - 1)))
                                for j, seq in tails.items()], tail_token)
            for j in tails:
                L.llama_memory_seq_rm(self._mem, slot_of[j], splits[j], -1)

    def _decode_parts(self, parts: list[tuple[int, list[int], int, set[int]]], on_row) -> None:
        """Decode (slot, tokens, first position, positions whose logits are wanted) in slot order, as many
        llama_decode calls as n_batch needs; `on_row(slot, position, logits)` for each wanted position."""
        n, wanted = 0, []
        for slot, tokens, start, read in parts:
            for k, token in enumerate(tokens):
                pos = start + k
                self._b_tok[n], self._b_pos[n], self._b_seq[n] = token, pos, slot
                self._b_logits[n] = pos in read
                if pos in read:
                    wanted.append((n, slot, pos))
                n += 1
                if n == self.n_batch:
                    self._decode(n)
                    for idx, s, p in wanted:
                        on_row(s, p, self._logits(idx))
                    n, wanted = 0, []
        if n:
            self._decode(n)
            for idx, s, p in wanted:
                on_row(s, p, self._logits(idx))

    def _run(self, live_jobs: list[_Job], jobs: list[_Job], results, shared: int) -> None:
        """Continuous batching until every sample of `live_jobs` is finished (see `_BatchRun`)."""
        _BatchRun(self, live_jobs, jobs, results, shared).run()

    def close(self) -> None:
        L = getattr(self, "_L", None)
        if L is None:
            return
        for chain in list(getattr(self, "_chains", [])):
            self._free_chain(chain)
        if getattr(self, "_ctx", None):
            L.llama_free(self._ctx)
            self._ctx = None
        if getattr(self, "_model", None):
            L.llama_model_free(self._model)
            self._model = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown may have torn down ctypes already
            pass


def settled_choice(text: str, choices: Sequence[str]) -> str | None:
    """The text a label-constrained sample will end with, as soon as it is settled: the grammar allows one
    optional whitespace character, then exactly one choice, so once the text so far begins only one choice
    (and is not a choice another one extends) nothing but that choice can follow. Ending the sample there
    gives the text full decoding gives and saves decoding the choice's remaining tokens (a two- or
    three-token label is settled after its first token). None: not settled yet."""
    lead = text[:1] if text[:1] in WHITESPACE else ""
    body = text[len(lead):]
    if not body:
        return None
    options = [c for c in choices if c.startswith(body)]
    return lead + options[0] if len(options) == 1 else None


def _trie_size(seqs: Sequence[Sequence[int]]) -> int:
    """Distinct prefix positions over all prompts (nodes of their token trie): the least any engine must compute."""
    ordered = sorted(tuple(s) for s in seqs)
    total, prev = 0, ()
    for s in ordered:
        total += len(s) - common_prefix(prev, s)
        prev = s
    return total


class _BatchRun:
    """One `generate` call's continuous batching: which sample sits in which slot, which request's
    prompt KV a free slot still holds, and what the next llama_decode carries. The engine owns the
    model, the context and the sampler chains; this object owns one call's bookkeeping.

    KV copies between streams are queued by llama.cpp and carried out at the start of the next
    llama_decode, before that call writes anything, so a source may change right after a copy.
    """

    def __init__(self, engine: BatchedSampler, live_jobs: list[_Job], jobs: list[_Job], results, shared: int) -> None:
        self.engine, self.L, self.mem = engine, engine._L, engine._mem
        self.jobs, self.results, self.shared = jobs, results, shared
        self.index = {id(j): i for i, j in enumerate(jobs)}
        self.queue = deque(live_jobs)
        self.slots: list[_Seq | None] = [None] * engine.n_slots
        self.dirty: dict[int, int] = {}  # free slot -> request whose prompt KV it still holds
        self.pieces, self.eog = engine._pieces, engine._eog

    def run(self) -> None:
        engine = self.engine
        while True:
            self.admit()
            self.pack()
            live = [s for s in self.slots if s is not None]
            if not live:
                break
            n, outputs, prompt_tokens = self.fill_batch(live)
            if n == 0:
                raise RuntimeError("batched engine stalled: nothing to decode")  # a bug, not a user error
            engine._decode(n, generated_only=not prompt_tokens)
            self.take_outputs(outputs)

    def copy(self, src: int, dst: int) -> None:
        self.L.llama_memory_seq_cp(self.mem, src, dst, -1, -1)
        self.engine._copied = True

    def finish(self, seq: _Seq, reason: str, text: str) -> None:
        self.results[seq.req][seq.index] = Completion(text=text, n_tokens=len(seq.tokens), finish_reason=reason)
        progress.sample_done()
        self.slots[seq.slot] = None
        self.dirty[seq.slot] = seq.req if seq.twin_of is None else NO_KV  # a twin's stream holds nothing of its own
        self.engine._free_chain(seq.chain)

    def accept(self, seq: _Seq, token: int) -> None:
        """Record a sampled token; finish the sample or queue the token for the next step."""
        self.engine.stats["generated"] += 1
        job = self.jobs[seq.req]
        p = job.params
        if token in self.eog and not (p.ignore_eos and not p.choices):
            self.finish(seq, "stop", seq.data.decode("utf-8", errors="ignore"))
            return
        seq.tokens.append(token)
        seq.data += self.pieces[token]
        text = seq.data.decode("utf-8", errors="ignore")
        if p.stop:
            cut, found = truncate_at_stop(text, p.stop)
            if found:
                self.finish(seq, "stop", cut)
                return
        if p.run_on is not None and p.run_on.exceeded(settled_text(text, p.stop)):
            self.finish(seq, "abandoned", text)
            return
        if job.terminal and (done := settled_choice(text, job.params.choices)) is not None:
            self.finish(seq, "stop", done)
        elif len(seq.tokens) >= seq.limit:
            self.finish(seq, "length", text)
        else:
            seq.next_token = token

    def donor_for(self, req: int, slot: int) -> int | None:
        """A slot holding the KV of request `req`'s whole prompt (prefill finished)."""
        if self.dirty.get(slot) == req:
            return slot
        for s in self.slots:
            if (s is not None and s.req == req and s.leader is None and s.twin_of is None and not s.pending
                    and s.pos >= s.prompt_len):
                return s.slot
        return next((s for s, r in self.dirty.items() if r == req), None)

    def admit(self) -> None:
        """Fill free slots from the queue: a sample whose prompt KV exists elsewhere copies it and starts
        sampling at once; one whose prompt is being prefilled follows that leader; else it prefills."""
        engine, slots, dirty = self.engine, self.slots, self.dirty
        while self.queue:
            free = [s for s in range(engine.n_slots) if slots[s] is None]
            if not free:
                break
            job = self.queue[0]
            if engine.share_twins and job.next_index == 0 and len(free) < min(job.params.n, engine.n_slots):
                break  # a request's samples start together, or the later ones find no twin to ride on
            req = self.index[id(job)]
            slot = next((s for s in free if dirty.get(s) == req), free[0])
            i = job.next_index
            job.next_index += 1
            if job.next_index >= job.params.n:
                self.queue.popleft()
            n = len(job.tokens)
            seq = _Seq(req=req, index=i, slot=slot, chain=engine._make_chain(job.params, job.params.seed + i),
                       prompt_len=n, limit=job.limit)
            slots[slot] = seq
            donor = self.donor_for(req, slot) if job.first_logits is not None else None
            leader = next((s for s in slots if s is not None and s.req == req and s.pending), None)
            if donor is not None:
                first = job.first_logits
                if job.next_index >= job.params.n:
                    job.first_logits = None
                token = engine._sample_row(seq.chain, first, job.allowed)
                seq.pos = n
                dirty.pop(slot, None)
                twin = self.unfed_twin(req, n, token) if engine.share_twins else None
                if twin is not None:  # the same first token as a sample not yet decoded: ride on it
                    seq.twin_of = twin
                    self.accept(seq, token)
                    if seq.next_token is not None:
                        twin.twins.append(seq)
                    continue
                if donor != slot:
                    self.copy(donor, slot)  # a whole stream: the only copy llama.cpp does
                self.L.llama_memory_seq_rm(self.mem, slot, n, -1)
                self.accept(seq, token)
                continue
            if slot in dirty:
                self.L.llama_memory_seq_rm(self.mem, slot, -1, -1)
                dirty.pop(slot)
            if leader is not None:
                seq.leader = leader
                leader.followers.append(seq)
            else:
                if self.shared:
                    self.copy(engine._prefix_seq, slot)
                seq.pending, seq.pos = job.tokens[self.shared:], self.shared
        for s in list(dirty):
            self.L.llama_memory_seq_rm(self.mem, s, -1, -1)
        dirty.clear()

    def unfed_twin(self, req: int, pos: int, token: int) -> _Seq | None:
        """A decoded sample of request `req` whose only token so far is `token`, not yet fed to the model."""
        return next((o for o in self.slots if o is not None and o.req == req and o.twin_of is None
                     and o.leader is None and o.pos == pos and o.next_token == token and o.tokens == [token]), None)

    def pack(self) -> None:
        """Move decoded sequences from the top slots into holes below them: one forward pass per run of
        consecutive slots, so a hole costs a pass while a move costs one stream copy. A twin is a hole
        too (it feeds no token and its stream holds nothing); it swaps places with the sequence moved."""
        slots, n_slots = self.slots, self.engine.n_slots

        def fed(s: int) -> bool:
            return slots[s] is not None and slots[s].twin_of is None

        while True:
            holes = [s for s in range(n_slots) if not fed(s)]
            top = max((s for s in range(n_slots) if fed(s)), default=-1)
            if not holes or holes[0] > top:
                return
            seq, dst = slots[top], holes[0]
            if seq.leader is None:  # a waiting follower has no KV yet
                self.copy(top, dst)
                self.L.llama_memory_seq_rm(self.mem, top, -1, -1)
            moved = slots[dst]
            slots[dst], slots[top], seq.slot = seq, moved, dst
            if moved is not None:
                moved.slot = top

    def fill_batch(self, live: list[_Seq]) -> tuple[int, list[tuple[int, _Seq]], bool]:
        """The next llama_decode's batch: each sample's next token, and prompt tokens up to n_batch.
        Returns the token count, the (batch row, sample) pairs that want logits, and whether prompt
        tokens are in it."""
        engine = self.engine
        tok, pos, seqb, logits = engine._b_tok, engine._b_pos, engine._b_seq, engine._b_logits
        n = 0
        prompt_tokens = False
        outputs: list[tuple[int, _Seq]] = []
        for s in live:  # slot order: llama.cpp makes one pass per run of consecutive sequence ids
            if s.twin_of is not None:
                continue  # draws from its twin's row
            if s.next_token is not None and n < engine.n_batch:
                engine.stats["twin_tokens"] += len(s.twins)
                tok[n], pos[n], seqb[n], logits[n] = s.next_token, s.pos, s.slot, 1
                outputs.append((n, s))
                s.next_token = None
                s.pos += 1
                n += 1
            elif s.pending and n < engine.n_batch:
                budget = engine.n_batch - n - sum(1 for o in live if o.slot > s.slot and o.next_token is not None)
                k = min(len(s.pending), max(budget, 0))
                if k == 0:
                    continue
                tok[n:n + k] = s.pending[:k]
                pos[n:n + k] = np.arange(s.pos, s.pos + k, dtype=np.int32)
                seqb[n:n + k] = s.slot
                logits[n:n + k] = 0
                s.pending = s.pending[k:]
                s.pos += k
                n += k
                prompt_tokens = True
                engine.stats["prefill_computed"] += k
                if not s.pending:
                    logits[n - 1] = 1
                    outputs.append((n - 1, s))
        return n, outputs, prompt_tokens

    def take_outputs(self, outputs: list[tuple[int, _Seq]]) -> None:
        """Sample from the logits just computed: each sample fed, its twins, and the followers of a prompt
        just completed (they start as its twins); then the twins that drew another token part ways."""
        for idx, s in outputs:
            riders, s.twins = s.twins, []
            if s.pos == s.prompt_len and s.next_token is None and not s.tokens:  # the prompt was just completed
                job = self.jobs[s.req]
                if job.next_index < job.params.n:  # samples still queued start from these logits
                    job.first_logits = self.engine._logits(idx).copy()
                for f in s.followers:
                    f.leader, f.twin_of = None, s
                riders += s.followers
                s.followers = []
            for member in (s, *riders):
                member.next_token = None
                self.accept(member, self.sample(member, idx))
            if riders:
                self.part_ways(s, riders)

    def part_ways(self, s: _Seq, riders: list[_Seq]) -> None:
        """After `s` and the samples riding on its row each drew a token: riders that drew what `s` drew
        stay its twins (or, with sharing off, get their own copy); the others group by the token they drew,
        and one of each group gets `s`'s KV and is fed from now on, the rest ride on it. If `s` finished,
        the first such sample takes over its slot, whose stream holds the tokens so far."""
        share = self.engine.share_twins
        groups: dict[int, list[_Seq]] = {}
        for r in riders:
            if r.next_token is not None:  # not finished
                r.pos = s.pos
                groups.setdefault(r.next_token, []).append(r)
        source = s.slot if s.next_token is not None else None
        if source is not None and share:
            s.twins = groups.pop(s.next_token, [])
        for members in groups.values():
            for head in (members[:1] if share else members):
                if source is None:
                    self.take_slot(head, s.slot)
                    source = head.slot
                else:
                    self.copy(source, head.slot)  # carried out before the next decode writes `s`'s token
                head.twin_of = None
                if share:
                    head.twins = members[1:]
                    for r in head.twins:
                        r.twin_of = head

    def take_slot(self, seq: _Seq, slot: int) -> None:
        """Move `seq` into the free `slot`, whose stream it takes over; its own slot is freed."""
        self.slots[seq.slot] = None
        self.dirty[seq.slot] = NO_KV
        self.dirty.pop(slot, None)
        self.slots[slot], seq.slot = seq, slot

    def sample(self, seq: _Seq, idx: int) -> int:
        allowed = self.jobs[seq.req].allowed
        engine = self.engine
        if allowed is None:
            start = time.perf_counter()
            token = self.L.llama_sampler_sample(seq.chain, engine._ctx, idx)
            engine.stats["sample_seconds"] += time.perf_counter() - start
            return token
        return engine._sample_row(seq.chain, engine._logits(idx), allowed)

