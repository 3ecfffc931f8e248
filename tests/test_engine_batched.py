"""The batched llama.cpp engine against the sequential reference, on a tiny model trained here.

The model is pretrained for a few seconds on a small templated corpus: a random-init model puts
near-equal logits on every token (greedy would then hinge on float noise) and never produces a
stop string on purpose; after training it continues the corpus, so greedy is robust and stops occur.
One thread per engine: tests run beside other work on 2 cores, where spinning threads stall.
"""

from __future__ import annotations

import random
import re

import numpy as np
import pytest

pytest.importorskip("llama_cpp")
torch = pytest.importorskip("torch")

from selfguide_lite.config import EngineConfig  # noqa: E402
from selfguide_lite.engine import batched, open_sampler  # noqa: E402
from selfguide_lite.engine.batched import BatchedSampler  # noqa: E402
from selfguide_lite.engine.sampler import Request, SamplingParams  # noqa: E402
from selfguide_lite.engine.sequential import LlamaCppSampler  # noqa: E402
from selfguide_lite.errors import UserError  # noqa: E402

SUBJECTS = ["the cat", "a dog", "my friend", "the teacher", "our team", "the bird", "a child", "the farmer"]
VERBS = ["likes", "sees", "finds", "wants", "paints", "keeps"]
OBJECTS = ["red apples", "the river", "a small house", "green fields", "the old car", "warm bread"]
LABELS = ("positive", "negative")
FEW_SHOT = (
    "Decide whether each sentence is positive or negative.\n"
    "Sentence: the cat likes warm bread.\nLabel: positive\n"
    "Sentence: a dog sees the river.\nLabel: negative\n"
    "Sentence: the farmer keeps green fields.\nLabel: positive\n"
)


def _corpus() -> list[str]:
    rng = random.Random(0)
    lines = []
    for s in SUBJECTS:
        for v in VERBS:
            label = "positive" if v in ("likes", "wants", "keeps") else "negative"
            lines.append(f"Sentence: {s} {v} {rng.choice(OBJECTS)}.\nLabel: {label}\n")
    return lines


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    from selfguide_lite.export import convert_to_gguf
    from selfguide_lite.toy_models.tiny import TinyShape, build_tiny_model, save_checkpoint

    out = tmp_path_factory.mktemp("batched_model")
    lines = _corpus()
    shape = TinyShape(hidden=64, layers=2, heads=2, kv_heads=1, intermediate=192)
    model, tok = build_tiny_model(out / "hf", lines, arch="llama", vocab_size=320, shape=shape)
    ids = torch.tensor(tok("".join(lines), add_special_tokens=False)["input_ids"])
    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=4e-3)
    model.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a toy model: threads only add barrier waits, and stall badly beside other work
    for _ in range(120):
        starts = torch.randint(0, len(ids) - 65, (8,), generator=gen)
        x = torch.cat([torch.ones(8, 1, dtype=torch.long), torch.stack([ids[s:s + 64] for s in starts])], 1)
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.set_num_threads(threads)
    assert loss.item() < 1.0, "tiny model did not learn its corpus"
    model.eval()
    save_checkpoint(model, tok, out / "hf")
    return convert_to_gguf(out / "hf", out / "tiny.f32.gguf", "f32")


@pytest.fixture(scope="module")
def reference(model_path):
    with LlamaCppSampler(model_path, n_ctx=512, n_threads=1) as s:
        yield s


@pytest.fixture(scope="module")
def engine(model_path):
    with BatchedSampler(model_path, n_ctx=512, n_threads=1, n_parallel=4) as s:
        yield s


PROMPTS = [
    "Sentence: the cat",
    "Sentence: a dog likes",
    "Sentence: my friend sees green fields.\nLabel:",
    FEW_SHOT + "Sentence: our team paints",
    FEW_SHOT * 3 + "Sentence: the bird finds the old car.\nLabel: negative\nSentence: a child",
    "Label: positive\n",
]


def test_greedy_matches_sequential_token_for_token(engine, reference):
    requests = [Request(p, SamplingParams(max_tokens=8 + 7 * i)) for i, p in enumerate(PROMPTS)]
    want = reference.generate(requests)
    got = engine.generate(requests)
    assert [r[0] for r in got] == [r[0] for r in want]
    assert all(r[0].n_tokens > 0 and r[0].text for r in got)


def test_greedy_with_more_sequences_than_slots_and_32_slots(model_path, reference):
    prompts = [f"Sentence: {s} {v}" for s in SUBJECTS for v in VERBS[:5]]  # 40 prompts
    requests = [Request(p, SamplingParams(max_tokens=12 + i % 9)) for i, p in enumerate(prompts)]
    want = reference.generate(requests)
    with BatchedSampler(model_path, n_ctx=512, n_threads=1, n_parallel=32) as wide:
        assert wide.generate(requests) == want
    with BatchedSampler(model_path, n_ctx=512, n_threads=1, n_parallel=3) as narrow:
        assert narrow.generate(requests) == want


def test_small_kv_budget_limits_concurrency_not_results(model_path, reference, monkeypatch):
    monkeypatch.setattr(batched, "KV_BUDGET_BYTES", 1)  # cache holds one window: admission must throttle
    requests = [Request(FEW_SHOT + f"Sentence: {s}", SamplingParams(max_tokens=200, stop=("\n",))) for s in SUBJECTS]
    with BatchedSampler(model_path, n_ctx=512, n_threads=1, n_parallel=8) as sampler:
        got = sampler.generate(requests)
        assert sampler.n_slots < 8
    assert got == reference.generate(requests)


def test_stop_strings_and_max_tokens_per_sequence(engine, reference):
    requests = [
        Request(PROMPTS[0], SamplingParams(max_tokens=40, stop=("\n",))),
        Request(PROMPTS[1], SamplingParams(max_tokens=40, stop=(".", "Label"))),
        Request(PROMPTS[2], SamplingParams(max_tokens=3)),
        Request(PROMPTS[3], SamplingParams(max_tokens=40, stop=("Label:",))),
        Request(PROMPTS[4], SamplingParams(max_tokens=1)),
        Request(PROMPTS[5], SamplingParams(max_tokens=25, ignore_eos=True, temperature=1.0, seed=4)),
    ]
    got = [r[0] for r in engine.generate(requests)]
    assert got[0].finish_reason == "stop" and "\n" not in got[0].text and got[0].text
    assert got[1].finish_reason == "stop" and "." not in got[1].text and "Label" not in got[1].text
    assert (got[2].n_tokens, got[2].finish_reason) == (3, "length")
    assert got[3].finish_reason == "stop" and "Label:" not in got[3].text
    assert (got[4].n_tokens, got[4].finish_reason) == (1, "length")
    assert (got[5].n_tokens, got[5].finish_reason) == (25, "length")
    greedy = [i for i, r in enumerate(requests) if r.params.temperature == 0]
    want = reference.generate([requests[i] for i in greedy])
    assert [got[i] for i in greedy] == [w[0] for w in want]


def test_sampling_is_independent_of_parallelism(model_path):
    requests = [Request(p, SamplingParams(temperature=2.0, top_k=40, max_tokens=12, n=3, seed=11 * i))
                for i, p in enumerate(PROMPTS)]
    outputs = []
    for n_parallel in (1, 4, 16):
        with BatchedSampler(model_path, n_ctx=512, n_threads=1, n_parallel=n_parallel) as s:
            outputs.append(s.generate(requests))
    assert outputs[0] == outputs[1] == outputs[2]
    texts = {c.text for r in outputs[0] for c in r}
    assert len(texts) > len(PROMPTS), "temperature 2 should give varied samples, or this test proves nothing"


def test_n_samples_are_reproducible_and_seeded_per_sample(engine):
    prompt = FEW_SHOT + "Sentence: the teacher"
    params = SamplingParams(temperature=1.5, max_tokens=10, n=5, seed=100)
    first = engine.generate([Request(prompt, params)])[0]
    again = engine.generate([Request(prompt, params)])[0]
    assert first == again and len(first) == 5
    singles = [engine.generate([Request(prompt, SamplingParams(temperature=1.5, max_tokens=10, seed=100 + i))])[0][0]
               for i in range(5)]
    assert singles == first  # sample i is drawn with seed + i, whatever is decoded beside it
    other = engine.generate([Request(prompt, SamplingParams(temperature=1.5, max_tokens=10, n=5, seed=7))])[0]
    assert other != first


def test_classification_is_always_one_of_the_choices(engine):
    requests = [Request(f"Sentence: {s} {v} the river.\nLabel:", SamplingParams(temperature=1.5, n=6, seed=i,
                                                                              choices=LABELS))
                for i, (s, v) in enumerate(zip(SUBJECTS, VERBS, strict=False))]
    texts = [c.text for r in engine.generate(requests) for c in r]
    assert len(texts) == 36
    assert all(re.fullmatch(r"[ \t\n]?(positive|negative)", t) for t in texts), texts
    assert {t.strip() for t in texts} == set(LABELS)
    odd = ("no", "nope", "yes indeed")  # one choice is a prefix of another; none is in the corpus
    texts = [c.text for c in engine.generate([Request("Sentence: a dog sees", SamplingParams(
        temperature=1.0, n=8, seed=3, max_tokens=1, choices=odd))])[0]]
    assert all(t.lstrip(" \t\n") in odd and len(t) - len(t.lstrip(" \t\n")) <= 1 for t in texts), texts


def test_a_settled_choice_is_the_text_full_decoding_gives_with_fewer_tokens(engine, monkeypatch):
    """A constrained sample ends once its text begins one choice only (settled_choice): every sample's text
    equals the one decoding to the end of the choice gives, and fewer tokens are decoded."""
    choices = ("positive feeling", "negative feeling", "no")
    requests = [Request(f"Sentence: {s} {v} the river.\nLabel:", SamplingParams(temperature=1.2, n=5, seed=i,
                                                                              choices=choices))
                for i, (s, v) in enumerate(zip(SUBJECTS, VERBS, strict=False))]
    early = engine.generate(requests)

    def only_at_the_end(text, choices):  # the rule before settled_choice: finish on a complete choice
        body = text[1:] if text[:1] in batched.WHITESPACE else text
        return text if body in choices and not any(c != body and c.startswith(body) for c in choices) else None

    monkeypatch.setattr(batched, "settled_choice", only_at_the_end)
    full = engine.generate(requests)
    assert [[c.text for c in r] for r in early] == [[c.text for c in r] for r in full]
    assert {c.text.strip() for r in early for c in r} >= {"positive feeling", "negative feeling"}
    assert sum(c.n_tokens for r in early for c in r) < sum(c.n_tokens for r in full for c in r)


def test_scoring_and_sampling_together_match_each_alone(engine, monkeypatch):
    """score_and_generate (the signal check's vote beside its label scores, each prompt computed once):
    the scores are `score`'s, and every sample is the one `generate` draws (the same first-token row
    within float tolerance; on this model the same text)."""
    from selfguide_lite.engine.sampler import ScoreRequest

    choices = ("positive", "negative feeling", "no")
    prompts = [f"Sentence: {s} {v} the river.\nLabel:" for s, v in zip(SUBJECTS, VERBS, strict=False)]
    scores = [ScoreRequest(p, tuple(f" {c}" for c in choices)) for p in prompts]
    requests = [Request(p, SamplingParams(temperature=3.0, top_k=0, n=6, seed=40 + i, choices=choices))
                for i, p in enumerate(prompts)]
    sampled_apart, generate = [], engine.generate
    monkeypatch.setattr(engine, "generate", lambda reqs: sampled_apart.append(len(reqs)) or generate(reqs))
    fused_scores, fused = engine.score_and_generate(scores, requests)
    monkeypatch.undo()
    assert sum(sampled_apart) < len(requests)  # most requests were settled from the scoring pass's rows
    assert np.allclose(fused_scores, engine.score(scores), atol=1e-4)
    alone = engine.generate(requests)
    assert [[c.text for c in r] for r in fused] == [[c.text for c in r] for r in alone]
    assert len({c.text.strip() for r in fused for c in r}) >= 2  # the draws vary, or this proves little


def test_settled_choice_waits_for_a_unique_beginning():
    choices = ("no", "nope", "yes indeed")
    assert batched.settled_choice(" y", choices) == " yes indeed"
    assert batched.settled_choice("no", choices) is None  # "nope" may still follow
    assert batched.settled_choice("nop", choices) == "nope"
    assert batched.settled_choice(" ", choices) is None and batched.settled_choice("x", choices) is None


def test_shared_prefix_is_computed_once(engine):
    prompts = [FEW_SHOT + f"Sentence: {s} {v} the river.\nLabel:" for s, v in zip(SUBJECTS, VERBS, strict=False)]
    requests = [Request(p, SamplingParams(temperature=0.5, max_tokens=4, n=4, seed=1)) for p in prompts]
    engine.generate([Request("unrelated prompt", SamplingParams(max_tokens=2))])  # drop any cached prefix
    engine.generate(requests)
    stats = engine.last_stats
    tokens = [engine.prompt_tokens(p) for p in prompts]
    prefix = _lcp(tokens)
    unique = len({tuple(t[:k]) for t in tokens for k in range(1, len(t) + 1)})  # nodes of the prompts' trie
    assert stats["prefill_unique"] == unique
    assert stats["prefill_requested"] == 4 * sum(len(engine.prompt_tokens(p)) for p in prompts)
    assert stats["prefill_computed"] <= 1.2 * unique
    assert stats["prefill_computed"] < stats["prefill_requested"] / 3
    # the profile timers: every decode and every sampled token is timed inside the call's wall time
    assert stats["decode_calls"] > 0 and stats["decode_seconds"] > 0 and stats["sample_seconds"] > 0
    assert stats["decode_seconds"] + stats["sample_seconds"] <= stats["generate_seconds"]
    # 6 prompts x 4 samples of 4 tokens: most steps carry generated tokens only, and those are a subset
    assert 0 < stats["plain_decode_tokens"] <= stats["generated"]
    assert 0 < stats["plain_decode_seconds"] <= stats["decode_seconds"]
    engine.generate(requests)  # the prefix survives between calls
    assert engine.last_stats["prefill_computed"] <= engine.last_stats["prefill_unique"] - prefix + 6 * 4


def test_prompt_that_cannot_fit_is_a_user_error(engine):
    with pytest.raises(UserError, match="exceeds the context"):
        engine.generate([Request(FEW_SHOT * 8, SamplingParams(max_tokens=400))])


def test_open_sampler_defaults_to_batched(model_path):
    with open_sampler(model_path, EngineConfig(n_threads=1, n_parallel=2, n_ctx=256)) as s:
        assert isinstance(s, BatchedSampler)
        assert s.count_tokens("Sentence: the cat") > 0 and s.info.bos_token
    with open_sampler(model_path, EngineConfig(backend="sequential", n_threads=1, n_ctx=256)) as s:
        assert isinstance(s, LlamaCppSampler)


def _lcp(seqs):
    n = min(len(s) for s in seqs)
    for i in range(n):
        if len({s[i] for s in seqs}) > 1:
            return i
    return n


@pytest.mark.parametrize("backend", ["sequential", "batched"])
def test_every_backend_keeps_the_sampler_contract(backend, model_path, monkeypatch):
    """The duties in `Sampler`'s docstring: n per request in order, seed + i per sample whatever is decoded
    beside it, cut at stop strings, one progress tick per sample."""
    from selfguide_lite import progress

    ticks = []
    monkeypatch.setattr(progress, "sample_done", lambda n=1: ticks.append(n))
    stop = ("\n",)
    many = SamplingParams(temperature=0.9, top_k=40, max_tokens=12, n=3, seed=11, stop=stop)
    requests = [Request(FEW_SHOT + "Sentence: the cat", many), Request(FEW_SHOT + "Sentence: a child", many),
                Request(FEW_SHOT + "Sentence: our team", SamplingParams(max_tokens=6, n=1, seed=5, stop=stop))]
    with open_sampler(model_path, EngineConfig(backend=backend, n_ctx=2048, n_threads=1)) as sampler:
        out = sampler.generate(requests)
        assert [len(o) for o in out] == [3, 3, 1]
        assert sum(ticks) == 7
        for completions in out:
            for c in completions:
                assert "\n" not in c.text and c.finish_reason in ("stop", "length")
        # sample i of the first request equals that request alone with n=1 and seed 11 + i
        for i in range(3):
            alone = sampler.generate([Request(requests[0].prompt, SamplingParams(
                temperature=0.9, top_k=40, max_tokens=12, n=1, seed=11 + i, stop=stop))])
            assert alone[0][0].text == out[0][i].text, (backend, i)


def test_stopping_run_on_samples_early_changes_no_vote(engine, reference, monkeypatch):
    """Annotation samples stopped the moment the vote is certain to reject them (AnswerRunOn): on a fixed
    seed every vote (answer, share, reason, counts, samples rejected) is the one full decoding gives, on both local
    engines; the batched engine decodes fewer tokens."""
    from selfguide_lite.config import SelfGuideConfig
    from selfguide_lite.filters import AnswerRunOn
    from selfguide_lite.methods import labellers
    from selfguide_lite.prompts import PromptFormat
    from selfguide_lite.tasks import Demo, Task

    task = Task(name="subject", instruction="Name the sentence's subject.", type="generation",
                demos=[Demo("the cat sees the dog.", "cat"), Demo("a dog likes green fields.", "dog")])
    inputs = ["my friend sees the old car.", "our team paints the house.", "the bird finds a cat.", "a child likes it."]
    cfg = SelfGuideConfig(labeler="vote", num_samples=6, annotate_temperature=0.9, annotate_top_k=0, vote_threshold=0.3,
                          max_tokens_factor=40.0)
    rule = AnswerRunOn.for_vote(*labellers.answer_filters(task, cfg), inputs[0])
    assert rule is not None and rule.max_chars is not None and rule.lead_in

    def votes(sampler, early: bool):
        if not early:
            monkeypatch.setattr(labellers.AnswerRunOn, "for_vote", staticmethod(lambda length, checks, text: None))
        before = getattr(sampler, "stats", {}).get("generated", 0)
        out = labellers.annotate(task, sampler, cfg, PromptFormat(), inputs, seed=5)
        monkeypatch.undo()
        # how many samples were rejected is exact too; a stopped one cannot show noise a later token might have
        # written, so its reason may read "length" where full decoding says "noise"
        return [(v.answer, v.share, v.reason, v.counts, sum(v.rejected.values())) for v in out], getattr(sampler, "stats", {}).get("generated", 0) - before

    full, full_tokens = votes(engine, early=False)
    early, early_tokens = votes(engine, early=True)
    assert early == full
    assert early_tokens < full_tokens
    assert votes(reference, early=True)[0] == votes(reference, early=False)[0]  # ignores the limit: exact trivially


SCORED_LABELS = ("positive", "positively", "negative", "neg", "pos itive")  # some share first tokens


def _reference_label_scores(model_path, requests) -> list[list[float]]:
    """Summed log-probabilities from llama-cpp-python's own logits of each whole sequence (logits_all)."""
    import numpy as np
    from llama_cpp import Llama

    from selfguide_lite.engine.sampler import score_split

    llm = Llama(model_path=str(model_path), n_ctx=512, n_threads=1, logits_all=True, verbose=False)
    out = []
    for req in requests:
        prompt = llm.tokenize(req.prompt.encode(), add_bos=True, special=True)
        seqs = [llm.tokenize((req.prompt + c).encode(), add_bos=True, special=True) for c in req.continuations]
        split = score_split(prompt, seqs)
        row_scores = []
        for seq in seqs:
            llm.reset()
            llm.eval(seq)
            logits = np.asarray(llm.scores[: len(seq)], dtype=np.float64)
            lse = np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) + logits.max(1)
            row_scores.append(float(sum(logits[p - 1, seq[p]] - lse[p - 1] for p in range(split, len(seq)))))
        out.append(row_scores)
    llm.close()
    return out


def test_label_scores_equal_llama_cpp_logits(engine, reference, model_path):
    """Label scoring (the calibrated labeller's input): each label as a training target ends (lead space,
    label, end-of-answer token), tokenized with the prompt. Batched decodes are not bitwise equal to one
    sequence's, so the stated tolerance is 1e-3 nats per label; the ranking of labels must be identical.
    Six prompts on four slots (two groups) sharing a few-shot prefix (the prefix stream), then six sharing none."""
    from selfguide_lite.engine.sampler import ScoreRequest
    from selfguide_lite.prompts import PromptFormat

    fmt = PromptFormat.from_info(engine.info)
    assert fmt.eos_token  # the end-of-answer token is part of every scored continuation
    prompts = [FEW_SHOT + f"Sentence: {s} {v} the river.\nLabel:" for s, v in zip(SUBJECTS, VERBS, strict=False)]
    requests = [ScoreRequest(p, tuple(fmt.answer(lab) for lab in SCORED_LABELS)) for p in prompts]
    # and prompts sharing nothing but BOS, fewer continuations, more prompts than slots: no prefix stream,
    # each slot reused by a second group
    requests += [ScoreRequest(p, tuple(fmt.answer(lab) for lab in SCORED_LABELS[:2 + i % 3])) for i, p in enumerate(PROMPTS)]
    want = _reference_label_scores(model_path, requests)
    got = engine.score(requests[:len(prompts)]) + engine.score(requests[len(prompts):])  # two calls: see above
    slow = reference.score(requests)
    for w, g, s in zip(want, got, slow, strict=True):
        assert max(abs(a - b) for a, b in zip(w, g, strict=True)) < 1e-3
        assert max(abs(a - b) for a, b in zip(w, s, strict=True)) < 1e-3
        assert sorted(range(len(w)), key=w.__getitem__) == sorted(range(len(g)), key=g.__getitem__)
    # the trained model tells its labels apart: "likes" sentences are positive in its corpus
    assert got[0][SCORED_LABELS.index("positive")] > got[0][SCORED_LABELS.index("negative")]
    assert engine.score([]) == []


def test_a_server_cannot_score_labels():
    from selfguide_lite.engine.http import HttpSampler
    from selfguide_lite.engine.sampler import ScoreRequest

    with pytest.raises(UserError, match="cannot score labels"):
        HttpSampler.score(object.__new__(HttpSampler), [ScoreRequest("x", ("a",))])


@pytest.mark.parametrize("n_parallel", [2, 4, 16])
def test_identical_samples_are_decoded_once_with_the_same_results(model_path, n_parallel):
    """Twins (samples of one request with the same tokens so far) share one decode: every sample's text is
    what decoding each apart gives, and fewer tokens are fed. Low temperatures make twins common; stop
    strings (a common letter too) and short limits make a fed sample finish while its twins go on."""
    requests = [Request(p, SamplingParams(temperature=t, top_k=20, max_tokens=m, n=n, seed=5 * i,
                                          stop=(("\n",), ("e",), ())[i % 3]))
                for i, (p, t, m, n) in enumerate([(p, t, m, n) for p in PROMPTS
                                                   for t, m, n in ((0.4, 12, 8), (1.2, 6, 5), (0.9, 16, 16))])]
    outputs, twin_tokens = [], []
    for share in (False, True):
        with BatchedSampler(model_path, n_ctx=512, n_threads=1, n_parallel=n_parallel) as s:
            s.share_twins = share
            outputs.append(s.generate(requests))
            twin_tokens.append(s.last_stats["twin_tokens"])
    assert outputs[0] == outputs[1]
    assert twin_tokens[0] == 0 and twin_tokens[1] > 0
    texts = [c.text for r in outputs[0] for c in r]
    assert len(set(texts)) > len(PROMPTS), "varied samples are needed, or twins never part ways"
