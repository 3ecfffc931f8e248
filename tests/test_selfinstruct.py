"""Self-Instruct bootstrap: filters, parsers, context sampling, routing and the funnel, with a scripted sampler."""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from selfguide_lite.config import SelfInstructConfig
from selfguide_lite.engine.sampler import Completion, ModelInfo, Request, Sampler
from selfguide_lite.methods.selfinstruct import (
    INSTANCE_STAGES,
    INSTRUCTION_STAGES,
    bootstrap,
    classification_examples,
    filter_instances,
    parse_input_first,
    parse_instruction_list,
    parse_output_first,
    parse_yes_no,
    sample_context,
    selfinstruct_training_rows,
    zero_shot_prompt,
)
from selfguide_lite.methods.selfinstruct_filters import (
    BlacklistFilter,
    conflicting_inputs,
    instance_check,
    instruction_filters,
    program_check,
    start_check,
    word_count_check,
)
from selfguide_lite.prompts import PromptFormat, instruct_training_prompt
from selfguide_lite.tasks import Demo, SeedTask, Task, load_seed_pool
from selfguide_lite.train import render_rows

DEMO_SEEDS = Path(__file__).resolve().parents[1] / "selfguide_lite" / "data" / "seed_tasks_demo.jsonl"
REAL_SEEDS = (
    Path(__file__).resolve().parents[1].parent / "shared" / "data" / "self-instruct" / "seed_tasks.jsonl"
)
PLAIN = PromptFormat()


class ScriptedSampler(Sampler):
    """Answers each request with `respond(request)`; keeps every request it saw."""

    info = ModelInfo(chat_template=None, bos_token="", eos_token="")

    def __init__(self, respond: Callable[[Request], Completion | str]) -> None:
        self.respond = respond
        self.requests: list[Request] = []

    def generate(self, requests: Sequence[Request]) -> list[list[Completion]]:
        self.requests.extend(requests)
        out = []
        for req in requests:
            c = self.respond(req)
            if isinstance(c, str):
                c = Completion(c, max(1, len(c) // 4), "stop")
            out.append([c] * req.params.n)
        return out


def kind_of(prompt: str) -> str:
    if prompt.startswith("Come up with a series of tasks"):
        return "instructions"
    if prompt.startswith("Can the following task be regarded"):
        return "classify"
    if prompt.startswith("Given the classification task definition"):
        return "output_first"
    if prompt.startswith("Come up with examples"):
        return "input_first"
    raise AssertionError(prompt[:60])


def last_task(prompt: str) -> str:
    return re.findall(r"Task: (.*)", prompt)[-1].strip()


def shown_instructions(prompt: str) -> list[str]:
    return re.findall(r"^\d+\. (.+)$", prompt, re.MULTILINE)


@pytest.fixture(scope="module")
def seeds() -> list[SeedTask]:
    return load_seed_pool(DEMO_SEEDS)


def make_seeds(n_cls: int, n_other: int) -> list[SeedTask]:
    out = []
    for i in range(n_cls + n_other):
        out.append(
            SeedTask(
                f"s{i}",
                f"n{i}",
                f"Seed task number {i} alpha{i} beta{i} gamma{i}",
                (Demo("", "x"),),
                i < n_cls,
            )
        )
    return out


# --- instruction filters -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "dropped"),
    [
        ("Sort these numbers", True),  # 3 words
        ("Sort these four numbers", False),
        ("word " * 150, False),
        ("word " * 151, True),
    ],
)
def test_word_count(text, dropped):
    assert (word_count_check(text) is not None) is dropped


@pytest.mark.parametrize(
    ("text", "dropped"),
    [
        ("Describe the picture in detail", True),
        ("Look at these IMAGES and describe them", True),
        ("Plot the monthly sales", True),
        ("Draw a cat using characters", True),
        ("Tell me how to go to the station", True),
        ("Tell me how to go  to the station", True),
        ("Summarize the attached file for me", True),
        ("Read the map and give directions", True),
        ("Recommend some music for studying", True),
        ("Explain what a flowchart is for", True),
        ("Explain how mapping functions work in Python", False),
        ("Suggest a profile name for a graphic designer", False),
        ("Describe the plotline of a famous novel", False),
        ("Give me a good going-away toast", False),
        ("Explain why a drawer gets stuck", False),
    ],
)
def test_blacklist(text, dropped):
    assert (BlacklistFilter().check(text) is not None) is dropped


def test_program_and_start():
    assert program_check("Write a program that sorts a list") is not None
    assert program_check("write a program to add numbers") is not None
    assert program_check("Write a poem about programs") is None
    assert program_check("Write a function that sorts a list") is None
    for bad in [
        '"Quote" the following line',
        "- List four fruits",
        "(Optional) name four fruits",
        "Élan is what word?",
        "¿Qué hora es ahora mismo?",
    ]:
        assert start_check(bad) is not None, bad
    for good in ["Tell me four fruits", "3 ways to save money on food", "a lowercase start is fine"]:
        assert start_check(good) is None, good


def test_instruction_filters_order_and_stages():
    f = instruction_filters()
    assert f.check("Too short") == ("length", "too few words (2 < 4)")
    assert f.check("Draw a picture of a house")[0] == "blacklist"
    assert f.check("Write a program that reverses a string")[0] == "program"
    assert f.check("- Name four large rivers")[0] == "start"
    assert f.check("Name four large rivers in Asia") is None


# --- instance filters ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("inp", "out", "stage"),
    [
        ("hello", "", "empty_output"),
        ("hello", "   ", "empty_output"),
        ("same text", "same text", "same_as_input"),
        ("Sentence:", "positive", "cut_off"),
        ("a sentence", "The answer is:", "cut_off"),
        ("", "A complete answer.", None),
        ("A question?", "An answer.", None),
    ],
)
def test_instance_check(inp, out, stage):
    got = instance_check(inp, out)
    assert (got[0] if got else None) == stage


def test_same_input_different_output_drops_all_instances():
    pairs = [("2 + 2", "4"), ("3 + 3", "6"), ("2 + 2", "5")]
    assert conflicting_inputs(pairs) == ["2 + 2"]
    kept, dropped = filter_instances(pairs, limit=5)
    assert kept == []
    assert [(k, stage) for k, stage, _ in dropped] == [(0, "conflict"), (1, "conflict"), (2, "conflict")]


def test_empty_inputs_may_have_many_outputs_and_duplicates_go():
    pairs = [("", "Joke one."), ("", "Joke two."), ("", "Joke one."), ("x", "y"), ("x", "y")]
    kept, dropped = filter_instances(pairs, limit=5)
    assert kept == [("", "Joke one."), ("", "Joke two."), ("x", "y")]
    assert [(k, s) for k, s, _ in dropped] == [(2, "duplicate"), (4, "duplicate")]


def test_invalid_instance_does_not_cause_a_conflict_and_cap_applies():
    pairs = [("q", "answer:"), ("q", "answer")] + [(f"in {i}", f"out {i}") for i in range(6)]
    kept, dropped = filter_instances(pairs, limit=5)
    assert kept[0] == ("q", "answer") and len(kept) == 5
    assert sorted(s for _, s, _ in dropped) == ["cut_off", "surplus", "surplus"]


# --- parsers ---------------------------------------------------------------------------------------


def test_parse_numbered_list_plain_continuation():
    text = " Tell me a joke about cats.\n10. Name three rivers in Europe.\n11. Sort the list 3, 1, 2.\n12."
    assert parse_instruction_list(text, 9) == [
        "Tell me a joke about cats.",
        "Name three rivers in Europe.",
        "Sort the list 3, 1, 2.",
        "",
    ]


def test_parse_numbered_list_keeps_sublists_and_stops():
    text = (
        " Rank these by size:\n1. a cat\n2. an ant\n10. Explain events of 2017. in short\n11 . Spell it"
        "\n\n12. after a blank line"
    )
    items = parse_instruction_list(text, 9)
    assert items == ["Rank these by size: 1. a cat 2. an ant", "Explain events of 2017. in short", "Spell it"]
    # Past item 16 nothing is read, even if the backend ignored the stop strings.
    text = " a b c d\n" + "".join(f"{n}. item {n} here now\n" for n in range(10, 20))
    items = parse_instruction_list(text, 9)
    assert len(items) == 8 and items[-1] == "item 16 here now"


def test_parse_numbered_list_chat_style_restates_number():
    assert parse_instruction_list("9. First task here\n10. Second task here", 9) == [
        "First task here",
        "Second task here",
    ]
    assert parse_instruction_list("1. First task here\n2. Second task here", 9) == [
        "First task here",
        "Second task here",
    ]
    assert parse_instruction_list("9.5 is a number to round up", 9) == ["9.5 is a number to round up"]


def test_parse_input_first_formats():
    text = (
        "Example 1\nParagraph: Ann went to Peru and Chile.\nOutput: Peru, Chile\n"
        "Example 2\nParagraph: Bo stayed in Japan.\nOutput: Japan\n"
    )
    assert parse_input_first(text) == [
        ("Paragraph: Ann went to Peru and Chile.", "Peru, Chile"),
        ("Paragraph: Bo stayed in Japan.", "Japan"),
    ]
    assert parse_input_first("Output:\n- Plank\n- Squats") == [("", "- Plank\n- Squats")]
    assert parse_input_first("Output: 85°F = 29.44°C") == [("", "85°F = 29.44°C")]
    assert parse_input_first("Just an answer without markers.") == [("", "Just an answer without markers.")]
    assert parse_input_first("Input: 2 + 2\nOutput: 4\nInput: 3 + 3\nOutput: 6") == [
        ("2 + 2", "4"),
        ("3 + 3", "6"),
    ]
    assert parse_input_first("Example 1: Sentence: hi there Output: greeting") == [
        ("Sentence: hi there", "greeting")
    ]
    assert parse_input_first("") == []


def test_parse_output_first_formats():
    text = (
        " positive\nSentence: I love it.\nClass label: negative\nSentence: I hate it.\nClass label: neutral"
    )
    assert parse_output_first(text) == [
        ("Sentence: I love it.", "positive"),
        ("Sentence: I hate it.", "negative"),
        ("", "neutral"),
    ]
    chat = "Class label: Spam\nEmail: Win money now!\nClass label: Not spam\nEmail: See you at lunch."
    assert parse_output_first(chat) == [
        ("Email: Win money now!", "Spam"),
        ("Email: See you at lunch.", "Not spam"),
    ]


def test_parse_yes_no():
    assert parse_yes_no(" Yes") is True and parse_yes_no("no.") is False and parse_yes_no("maybe") is None


# --- in-context sampling ---------------------------------------------------------------------------


def test_context_never_more_than_two_generated():
    cfg = SelfInstructConfig()
    seeds = [f"seed instruction {i}" for i in range(30)]
    rng = random.Random(0)
    for n_generated in (0, 1, 2, 3, 50):
        generated = [f"generated instruction {i}" for i in range(n_generated)]
        for _ in range(50):
            shown = sample_context(seeds, generated, cfg, rng)
            n_gen = sum(s.startswith("generated") for s in shown)
            assert len(shown) == 8 and len(set(shown)) == 8
            assert n_gen == min(2, n_generated)


def test_context_shuffles_generated_among_seeds():
    cfg = SelfInstructConfig()
    rng = random.Random(1)
    positions = set()
    for _ in range(100):
        shown = sample_context([f"s{i}" for i in range(20)], ["g0", "g1"], cfg, rng)
        positions.update(i for i, s in enumerate(shown) if s.startswith("g"))
    assert positions == set(range(8))


def test_classification_examples_use_seed_flags():
    cfg = SelfInstructConfig()
    shots = classification_examples(make_seeds(20, 30), cfg, random.Random(0))
    assert sum(flag for _, flag in shots) == 12 and sum(not flag for _, flag in shots) == 19
    shots = classification_examples(make_seeds(3, 5), cfg, random.Random(0))
    assert sum(flag for _, flag in shots) == 3 and len(shots) == 8


# --- the bootstrap ---------------------------------------------------------------------------------


class FakeStudent:
    """A scripted student: distinct instructions (plus some debris), classification when the text
    says "Classify", and instance completions in the right format for each."""

    def __init__(self, seed: int = 0, per_list: int = 4) -> None:
        self.rng = random.Random(seed)
        self.per_list = per_list
        self.n = 0

    def fresh(self) -> str:
        self.n += 1
        words = " ".join(f"w{self.n}x{k}" for k in range(5))
        return ("Classify the mood of " if self.n % 3 == 0 else "Explain the meaning of ") + words

    def __call__(self, req: Request) -> Completion | str:
        prompt = req.prompt
        kind = kind_of(prompt)
        if kind == "instructions":
            items = [self.fresh() for _ in range(self.per_list)]
            items += ["Draw a picture of a dog", "Too short", items[0] + " now"]
            first = len(shown_instructions(prompt)) + 1
            text = " " + "".join(f"{t}\n{first + 1 + k}. " for k, t in enumerate(items)) + "cut off mid"
            return Completion(text, 100, "length")
        if kind == "classify":
            return " Yes" if last_task(prompt).startswith("Classify") else " No"
        task = last_task(prompt)
        tag = task.split()[-1]
        if kind == "output_first":
            return f" happy\nSentence: I won {tag}.\nClass label: sad\nSentence: I lost {tag}.\nClass label: happy\nSentence: I lost {tag}."
        return (
            f"Example 1\nWord: {tag}\nOutput: It means {tag}.\nExample 2\nWord: {tag}2\nOutput:\n"
            f"Example 3\nWord: x{tag}\nOutput: Also x{tag}.\nExample 4\nWord: x{tag}\nOutput: Also x{tag}."
        )


def funnel_adds_up(res) -> None:
    s = res.stats
    assert s["candidates"] == sum(s["instruction_dropped"].values()) + s["instructions_accepted"]
    assert s["instance_candidates"] == sum(s["instance_dropped"].values()) + s["train"]
    assert (
        s["instructions_accepted"] == s["instructions_with_instances"] + s["instructions_without_instances"]
    )
    assert sum(s["classification"].values()) == s["instructions_accepted"]
    assert len(res.dropped) == (
        sum(s["instruction_dropped"].values())
        + sum(s["instance_dropped"].values())
        + s["instructions_without_instances"]
    )
    assert set(s["instruction_dropped"]) == set(INSTRUCTION_STAGES)
    assert set(s["instance_dropped"]) == set(INSTANCE_STAGES)
    for d in res.dropped:
        assert d["stage"] and d["reason"] and d["kind"] in ("instruction", "instance")


def test_bootstrap_end_to_end(seeds):
    cfg = SelfInstructConfig(wave_size=4)
    student = FakeStudent()
    sampler = ScriptedSampler(student)
    res = bootstrap(seeds, sampler, cfg, PLAIN, seed=0, num_instructions=12)
    s = res.stats
    assert s["instructions_accepted"] == 12 and s["stopped"] == "target reached"
    drops = s["instruction_dropped"]
    assert drops["blacklist"] > 0 and drops["length"] > 0 and drops["rouge"] > 0 and drops["truncated"] > 0
    funnel_adds_up(res)

    # Routing: classification instructions got the output-first prompt, the others input-first.
    accepted = {r["instruction"]: r["is_classification"] for r in res.train}
    by_kind = {"output_first": set(), "input_first": set()}
    for req in sampler.requests:
        k = kind_of(req.prompt)
        if k in by_kind:
            by_kind[k].add(last_task(req.prompt))
    assert by_kind["output_first"] and by_kind["input_first"]
    assert all(i.startswith("Classify") for i in by_kind["output_first"])
    assert all(i.startswith("Explain") for i in by_kind["input_first"])
    assert all(flag == i.startswith("Classify") for i, flag in accepted.items())

    # Classification completions give the same input two labels: every instance of them goes.
    assert not any(r["is_classification"] for r in res.train)
    assert s["instance_dropped"]["conflict"] > 0 and s["instructions_without_instances"] > 0
    # Input-first: example 2 has an empty output, example 4 repeats example 3.
    assert s["instance_dropped"]["empty_output"] > 0 and s["instance_dropped"]["duplicate"] > 0
    for r in res.train:
        assert set(r) >= {"id", "instruction", "input", "output", "is_classification"}
        assert r["output"] and r["input"] != r["output"]

    # Sampling parameters (contract §3.1, 3.3, 3.4).
    gen = [q for q in sampler.requests if kind_of(q.prompt) == "instructions"]
    assert {(q.params.temperature, q.params.top_p, q.params.presence_penalty) for q in gen} == {
        (0.7, 0.5, 2.0)
    }
    assert all("\n\n" in q.params.stop and "\n17." in q.params.stop for q in gen)
    cls = [q for q in sampler.requests if kind_of(q.prompt) == "classify"]
    assert all(q.params.temperature == 0 and q.params.choices == ("Yes", "No") for q in cls)
    inst = [q for q in sampler.requests if kind_of(q.prompt) in ("output_first", "input_first")]
    assert all(q.params.temperature == cfg.instance_temperature for q in inst)


def test_bootstrap_context_mixes_at_most_two_generated(seeds):
    sampler = ScriptedSampler(FakeStudent(per_list=3))
    res = bootstrap(seeds, sampler, SelfInstructConfig(wave_size=3), PLAIN, seed=1, num_instructions=20)
    seed_texts = {s.instruction for s in seeds}
    generated = {
        d["instruction"] for d in res.dropped if d["kind"] == "instruction" and d["stage"] == "no_instances"
    }
    generated |= {r["instruction"] for r in res.train}
    saw_generated = False
    for req in sampler.requests:
        if kind_of(req.prompt) != "instructions":
            continue
        shown = shown_instructions(req.prompt)
        assert len(shown) == 8
        n_gen = sum(t not in seed_texts for t in shown)
        assert all(t in seed_texts or t in generated for t in shown)
        assert n_gen <= 2
        saw_generated |= n_gen == 2
    assert saw_generated


def test_bootstrap_is_deterministic(seeds):
    cfg = SelfInstructConfig(wave_size=4)
    a = bootstrap(seeds, ScriptedSampler(FakeStudent()), cfg, PLAIN, seed=5, num_instructions=8)
    b = bootstrap(seeds, ScriptedSampler(FakeStudent()), cfg, PLAIN, seed=5, num_instructions=8)
    assert a.train == b.train and a.stats == b.stats


def test_bootstrap_stops_when_the_student_runs_dry(seeds):
    sampler = ScriptedSampler(
        lambda req: " Draw a picture\n" if kind_of(req.prompt) == "instructions" else "No"
    )
    res = bootstrap(
        seeds, sampler, SelfInstructConfig(wave_size=2), PLAIN, seed=0, num_instructions=5, patience=3
    )
    assert res.stats["stopped"].startswith("stalled") and res.stats["instructions_accepted"] == 0
    assert res.stats["waves"] == 3 and res.train == []
    funnel_adds_up(res)


def test_bootstrap_surplus_and_rouge_against_seeds(seeds):
    seed_copy = seeds[0].instruction + " please"

    def respond(req: Request) -> str:
        k = kind_of(req.prompt)
        if k == "instructions":
            return f" {seed_copy}\n10. Name four rivers of South America\n11. List four oceans of the world by size\n"
        return " No" if k == "classify" else "Output: a fine answer"

    res = bootstrap(
        seeds, ScriptedSampler(respond), SelfInstructConfig(wave_size=1), PLAIN, seed=0, num_instructions=1
    )
    drops = {d["instruction"]: d for d in res.dropped if d["kind"] == "instruction"}
    assert drops[seed_copy]["stage"] == "rouge" and drops[seed_copy]["nearest"] == seeds[0].instruction
    assert drops["List four oceans of the world by size"]["stage"] == "surplus"
    assert [r["instruction"] for r in res.train] == ["Name four rivers of South America"]
    funnel_adds_up(res)


def test_bootstrap_with_chat_template_renders_every_prompt(seeds):
    tmpl = "{% for m in messages %}<|user|>{{ m['content'] }}<|end|>{% endfor %}<|assistant|>"
    fmt = PromptFormat(chat_template=tmpl, eos_token="<|end|>")

    def respond(req: Request) -> str:
        assert req.prompt.startswith("<|user|>") and req.prompt.endswith("<|assistant|>")
        inner = req.prompt[len("<|user|>") : -len("<|end|><|assistant|>")]
        k = kind_of(inner)
        if k == "instructions":
            return "9. Name four famous painters from Spain\n10. Suggest four names for a pet turtle"
        return "No" if k == "classify" else "Output: Frida, Pablo, Diego, Joan"

    res = bootstrap(
        seeds, ScriptedSampler(respond), SelfInstructConfig(wave_size=1), fmt, seed=0, num_instructions=2
    )
    assert [r["instruction"] for r in res.train] == [
        "Name four famous painters from Spain",
        "Suggest four names for a pet turtle",
    ]


def test_real_seed_pool_classification_shots():
    if not REAL_SEEDS.is_file():
        pytest.skip(f"seed pool not found at {REAL_SEEDS}")
    real = load_seed_pool(REAL_SEEDS)
    shots = classification_examples(real, SelfInstructConfig(), random.Random(0))
    flags = {s.instruction: s.is_classification for s in real}
    assert len(shots) == 31 and all(flags[t] == f for t, f in shots)


def test_demo_seed_pool_is_well_formed(seeds):
    assert 20 <= len(seeds) <= 30
    assert 6 <= sum(s.is_classification for s in seeds) <= len(seeds) - 6
    assert all(s.instances and s.instruction for s in seeds)


# --- training rows -------------------------------------------------------------------------------


def test_training_rows_fixed_template():
    recs = [
        {
            "id": "a",
            "instruction": "Add the numbers.",
            "input": "2 and 3",
            "output": "5",
            "is_classification": False,
        },
        {
            "id": "b",
            "instruction": "Tell me a joke.",
            "input": "",
            "output": " Knock knock. ",
            "is_classification": False,
        },
    ]
    rows = selfinstruct_training_rows(recs)
    assert rows[0] == {
        "id": "a",
        "prompt": instruct_training_prompt("Add the numbers.", "2 and 3"),
        "completion": "5",
    }
    assert rows[0]["prompt"] == "### Instruction:\nAdd the numbers.\n\n### Input:\n2 and 3\n\n### Response:"
    assert "### Input" not in rows[1]["prompt"] and rows[1]["completion"] == "Knock knock."
    rendered = render_rows(rows, PromptFormat(eos_token="</s>"))  # what training sees
    assert rendered[0]["completion"] == " 5</s>" and rendered[0]["prompt"] == rows[0]["prompt"]


def test_zero_shot_prompt_is_the_training_template():
    task = Task("t", "Add the numbers.", [Demo("1 and 1", "2")], "generation")
    assert zero_shot_prompt(task, "2 and 3") == instruct_training_prompt("Add the numbers.", "2 and 3")
