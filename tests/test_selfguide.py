import re
from collections import Counter

import pytest

from selfguide_lite.config import SelfGuideConfig
from selfguide_lite.filters import LengthWindow, NoiseFilter
from selfguide_lite.methods.labellers import self_consistency_vote
from selfguide_lite.methods.selfguide import balance_classes, synthesize
from selfguide_lite.prompts import PromptFormat
from selfguide_lite.tasks import Demo, Task
from tests.helpers import ScriptedSampler

TASK = Task(
    name="topics",
    instruction="Say the topic.",
    demos=[Demo("The Tigers win the final", "sports"), Demo("Heavy rain hits Leeds", "weather"),
           Demo("A bakery opens in Oslo", "food")],
    type="classification",
    labels=["sports", "weather", "food"],
)
WORDS = {"sports": "team", "weather": "storm", "food": "bakery"}


def scripted(prompt: str, i: int, request) -> str:
    """Writes an input for the asked label; labels by keyword, with one dissenting sample in ten."""
    if "Write one new input" in prompt:
        label = re.search(r'correct output is "(\w+)"', prompt).group(1)
        return f" The {WORDS[label]} story number {request.params.seed % 1000}"
    new_input = prompt.rsplit("Input:", 1)[1]
    truth = next(lab for lab, w in WORDS.items() if w in new_input)
    return " " + (truth if i != 3 else "food")


def test_vote_majority_threshold_and_shortest_tie():
    noise = NoiseFilter()
    v = self_consistency_vote(["yes", "Yes.", "no"], labels=None, noise=noise, length=None, threshold=0.3)
    assert v.answer == "yes" and v.share == pytest.approx(2 / 3)
    tie = self_consistency_vote(["a longer answer", "short"], labels=None, noise=noise, length=None, threshold=0.3)
    assert tie.answer == "short"
    spread = self_consistency_vote(list("abcd"), labels=None, noise=noise, length=None, threshold=0.3)
    assert spread.answer is None and "consensus" in spread.reason


def test_vote_classification_counts_only_labels_and_returns_label_exactly():
    v = self_consistency_vote(["Sports.", "SPORTS", "banana", "weather"], labels=["sports", "weather"],
                              noise=NoiseFilter(), length=None, threshold=0.3)
    assert v.answer == "sports" and v.share == pytest.approx(2 / 3)
    assert v.rejected == {"off-label": 1}
    none = self_consistency_vote(["banana"], labels=["sports"], noise=NoiseFilter(), length=None, threshold=0.3)
    assert none.answer is None and none.reason == "no valid samples"


def test_vote_generation_drops_noise_and_out_of_window_samples():
    v = self_consistency_vote(["Sure, here is x", "ok", "a fine answer", "a fine answer!"], labels=None,
                              noise=NoiseFilter(), length=LengthWindow(5, 20), threshold=0.3)
    assert v.answer == "a fine answer" and v.rejected == {"noise": 1, "length": 1}


def test_balance_floor_stops_trimming_at_the_floor():
    recs = [{"id": str(i), "output": lab} for i, lab in enumerate(["a"] * 40 + ["b"] * 1 + ["c"] * 20)]
    kept, dropped = balance_classes(recs, seed=0, floor=10)
    counts = Counter(r["output"] for r in kept)
    assert counts == {"a": 10, "b": 1, "c": 10} and len(dropped) == 40
    assert Counter(r["output"] for r in balance_classes(recs, seed=0, floor=100)[0]) == {"a": 40, "b": 1, "c": 20}


def test_balance_downsamples_to_smallest_class():
    recs = [{"id": str(i), "output": lab} for i, lab in enumerate(["a"] * 5 + ["b"] * 2 + ["c"] * 3)]
    kept, dropped = balance_classes(recs, seed=0)
    assert Counter(r["output"] for r in kept) == {"a": 2, "b": 2, "c": 2}
    assert len(dropped) == 4


def test_synthesize_cycles_labels_votes_balances_and_accounts_for_every_candidate():
    sampler = ScriptedSampler(scripted)
    cfg = SelfGuideConfig(labeler="vote", num_inputs=12, wave_size=4, num_samples=10)
    res = synthesize(TASK, sampler, cfg, PromptFormat(), seed=7)
    gen = [r for r in sampler.requests if "Write one new input" in r.prompt]
    asked = [re.search(r'correct output is "(\w+)"', r.prompt).group(1) for r in gen]
    assert asked == ["sports", "weather", "food"] * 4
    assert all(r.params.temperature == 0.7 and r.params.top_k == 40 for r in gen)
    ann = [r for r in sampler.requests if "Write one new input" not in r.prompt]
    assert all(r.params.n == 10 and r.params.temperature == 0.2 and r.params.top_k == 10 for r in ann)
    assert all(r.params.choices == ("sports", "weather", "food") for r in ann)
    # Every candidate ends in train or dropped, and the funnel adds up.
    assert len(res.train) + len(res.dropped) == 12
    s = res.stats
    assert s["inputs_accepted"] + sum(s["input_dropped"].values()) == 12
    assert s["annotated"] + sum(s["annotation_dropped"].values()) == s["inputs_accepted"]
    assert s["train"] + s["balance_dropped"] == s["annotated"]
    # Labels come from the vote (keyword truth), are label-exact, and classes are balanced.
    for row in res.train:
        assert row["output"] == next(lab for lab, w in WORDS.items() if w in row["input"])
        assert row["completion"] == row["output"] and row["prompt"].endswith(f"Input: {row['input']}\nOutput:")
    assert len(set(Counter(r["output"] for r in res.train).values())) == 1
    assert all(d["stage"] and d["reason"] for d in res.dropped)


def test_synthesize_shows_accepted_inputs_back_and_drops_duplicates():
    outputs = iter(["The team story A", "The team story A", "The storm story B"] + ["The bakery C"] * 20)

    def respond(prompt, i, req):
        if "Write one new input" in prompt:
            return next(outputs)
        return "sports"

    sampler = ScriptedSampler(respond)
    cfg = SelfGuideConfig(labeler="vote", num_inputs=6, wave_size=2, num_samples=2, length_filter=False)
    res = synthesize(TASK, sampler, cfg, PromptFormat(), seed=0)
    assert res.stats["input_dropped"]["duplicate"] == 3  # A again, then C twice more
    later = [r.prompt for r in sampler.requests if "Write one new input" in r.prompt][2:]
    assert all("The team story A" in p for p in later)  # accepted inputs are shown back as context


def test_synthesize_generation_task_uses_generation_settings():
    task = Task("gen", "Rewrite politely.", [Demo("give it", "Could you please give it to me?")], "generation")

    def respond(prompt, i, req):
        return "hand it over" if "Write one new input" in prompt else "Would you please hand it over?"

    sampler = ScriptedSampler(respond)
    res = synthesize(task, sampler, SelfGuideConfig(labeler="vote", num_inputs=3, num_samples=3), PromptFormat(), seed=0)
    assert sampler.requests[0].params.temperature == 0.9
    assert all(r.params.choices is None for r in sampler.requests)
    assert res.stats["train"] == 1 and res.train[0]["output"] == "Would you please hand it over?"


@pytest.mark.parametrize("mode", ["request", "wave"])
def test_context_sampling_per_request_or_per_wave(mode):
    """`wave`: every input request of a wave shows the same accepted inputs (so their prompts share
    everything up to the asked label); `request`: each draws its own. Both are deterministic."""
    cfg = SelfGuideConfig(labeler="vote", num_inputs=24, wave_size=8, num_samples=2, context_inputs=2, length_filter=False,
                          without=["wave_context"] if mode == "request" else [])

    def contexts():
        sampler = ScriptedSampler(scripted)
        synthesize(TASK, sampler, cfg, PromptFormat(), seed=3)
        asks = [r.prompt for r in sampler.requests if "Write one new input" in r.prompt]
        return [[p.split("Write one new input")[0] for p in asks[w:w + 8]] for w in range(8, 24, 8)]

    first, again = contexts(), contexts()
    assert first == again
    for wave in first:
        distinct = {c for c in wave}
        assert (len(distinct) == 1) if mode == "wave" else (len(distinct) > 1), (mode, len(distinct))


FIELD_TASK = Task(
    name="pairs",
    instruction="Does the perspective support the claim?",
    demos=[Demo("claim: Cats are good.\n perspective: They purr.", "support"),
           Demo("claim: Tax is theft.\n perspective: Roads need money.", "undermine")],
    type="classification",
    labels=["support", "undermine"],
)


def test_fields_of_the_examples_are_required_and_the_first_leads_the_answer():
    from selfguide_lite.filters import FieldFilter, field_markers

    assert field_markers("Sentence 1: a b. Sentence 2: c") == ["Sentence 1:", "Sentence 2:"]
    assert field_markers("Sentence1: x\nSentence2: y") == ["Sentence1:", "Sentence2:"]
    demos = [d.input for d in FIELD_TASK.demos]
    ff = FieldFilter.from_examples(demos)
    assert ff.fields == ("claim:", "perspective:") and ff.lead(demos) == "claim:"
    assert ff.check("claim: Dogs bark. perspective: Loudly.") is None
    assert ff.check("Claim: Dogs bark.\nPerspective: Loudly.") is None  # case-insensitive
    assert "missing field 'perspective:'" == ff.check("The claim: Dogs bark.")
    assert "repeated" in ff.check("claim: a perspective: b claim: c perspective: d")
    # a marker only some examples have is not required; the lead is the start most examples share
    mixed = ["Statement: a. Choices: 1. x", "Statment: b. Choices: 1. y"]
    assert FieldFilter.from_examples(mixed).fields == ("choices:",) and FieldFilter.from_examples(mixed).lead(mixed) == ""
    typo = ["Statement: a. Choices: 1. x", "Statment: b. Choices: 1. y", "statement: c. Choices: 1. z",
            "Statement: d. Choices: 1. w"]
    assert FieldFilter.from_examples(typo).fields == ("choices:",) and FieldFilter.from_examples(typo).lead(typo) == "Statement:"
    assert FieldFilter.from_examples(typo).lead(["a Statement: x", "b Statement: y"]) == ""  # not at the start
    assert FieldFilter.from_examples(["plain text", "more text"]).fields == ()


def test_render_answer_start_continues_the_answer_in_both_formats():
    plain = PromptFormat()
    assert plain.render("Write one.\nInput:", answer_start="claim:") == "Write one.\nInput: claim:"
    chat = PromptFormat("{% for m in messages %}<u>{{ m['content'] }}</u>{% endfor %}<a>")
    assert chat.render("Write one.", answer_start="claim:") == "<u>Write one.</u><a>claim:"
    assert chat.render("Write one.") == "<u>Write one.</u><a>"


def test_written_inputs_start_with_the_lead_and_lack_no_field():
    seen = []

    def respond(prompt: str, i: int, request) -> str:
        if "Write one new input" in prompt:
            seen.append(prompt)
            n = request.params.seed % 1000
            # every other answer forgets the perspective; the lead "claim:" is already in the prompt
            return f" Dogs {n} bark.\n perspective: Loud {n}." if n % 2 else f" Dogs {n} bark."
        return " support" if "Loud" in prompt.rsplit("Input:", 1)[1] else " undermine"

    cfg = SelfGuideConfig(labeler="vote", num_inputs=12, wave_size=6, num_samples=2, length_filter=False, balance=False)
    res = synthesize(FIELD_TASK, ScriptedSampler(respond), cfg, PromptFormat(), seed=0)
    assert all(p.endswith("Input: claim:") for p in seen)
    kept = [r["input"] for r in res.train]
    assert kept and all(k.startswith("claim: Dogs") and "perspective:" in k for k in kept)
    assert res.stats["input_dropped"]["fields"] == 12 - len(kept) > 0
    off = synthesize(FIELD_TASK, ScriptedSampler(respond), cfg.model_copy(update={"without": ["input_lead", "field_filter"]}),
                     PromptFormat(), seed=0)
    assert off.stats["input_dropped"]["fields"] == 0 and not any(r["input"].startswith("claim:") for r in off.train)


def test_generation_vote_strips_lead_ins_and_rejects_demo_copies_and_run_ons():
    from selfguide_lite.filters import AnswerChecks

    checks = AnswerChecks.from_examples(["Who did the Han Chinese want to help the Mongols fight?", "pollution."])
    assert checks.max_lines == 1 and AnswerChecks.clean("The answer is: What do lobates feed on?") == "What do lobates feed on?"
    assert AnswerChecks.clean("Output - x") == "x" and AnswerChecks.clean("Answers vary") == "Answers vary"
    samples = ["The answer is: What do lobates feed on?", "What do lobates feed on?",
               "The answer is: Who did the Han Chinese want to help the Mongols fight?",
               "Who did the Han Chinese want to help the Mongols fight?",
               "Who did the Han Chinese want to help the Mongols fight?",
               "What do lobates feed on?\n\nWhat do lobates feed on?"]
    v = self_consistency_vote(samples, labels=None, noise=NoiseFilter(), length=None, threshold=0.3, checks=checks,
                              input_text="What do lobates run or uh feed on?")
    assert v.answer == "What do lobates feed on?" and v.share == 1.0
    assert v.rejected == {"demo copy": 3, "extra lines": 1}
    # without the checks the copies win (the original vote)
    plain = self_consistency_vote(samples, labels=None, noise=NoiseFilter(), length=None, threshold=0.3)
    assert plain.answer == "Who did the Han Chinese want to help the Mongols fight?"
    # an example's answer the input itself contains is not a copy ("pollution" in an overlap task)
    ok = self_consistency_vote(["pollution."], labels=None, noise=NoiseFilter(), length=None, threshold=0.3,
                               checks=checks, input_text="Sentence1: pollution is bad. Sentence2: stop pollution.")
    assert ok.answer == "pollution."


def test_answer_checks_apply_to_generation_only_and_can_be_switched_off():
    gen = Task(name="fix", instruction="Fix the sentence.", demos=[Demo("Who no what is it?", "What is it?")],
               type="generation")

    def respond(prompt, i, request):
        if "Write one new input" in prompt:
            return f" Where no when is {request.params.seed % 1000}?"
        return " What is it?" if i % 2 else " The answer is: When is it?"

    # one answer for every input: the repeated-answer limit (tested below) is switched off here
    cfg = SelfGuideConfig(labeler="vote", num_inputs=4, wave_size=4, num_samples=4, output_length_filter=False, without=["repeat_limit"])
    on = synthesize(gen, ScriptedSampler(respond), cfg, PromptFormat(), seed=0)
    assert {r["output"] for r in on.train} == {"When is it?"}
    assert on.stats["samples_rejected"] == {"demo copy": 8}
    off = synthesize(gen, ScriptedSampler(respond), cfg.model_copy(update={"without": ["repeat_limit", "answer_checks"]}), PromptFormat(), seed=0)
    assert off.stats["samples_rejected"] == {} and all(r["agreement"] == 0.5 for r in off.train)


def test_an_echoed_input_marker_is_counted_and_stripped_unless_the_original_filters_are_asked_for():
    from selfguide_lite.filters import strip_input_echo

    assert strip_input_echo(" Input: Who no what is it?") == ("Who no what is it?", True)
    assert strip_input_echo("input :x") == ("x", True)
    for kept in ("Inputs: x", "Output: x", "Who is it? Input: x"):
        assert strip_input_echo(kept) == (kept, False)

    gen = Task(name="fix", instruction="Fix the sentence.", demos=[Demo("Who no what is it?", "What is it?")],
               type="generation")

    def respond(prompt, i, request):
        if "Write one new input" in prompt:
            n = request.params.seed % 1000
            return f" Input: Where no when is {n}?" if n % 2 else f" Where no when is {n}?"
        return " When is " + prompt.rsplit("when is ", 1)[1].split("?")[0] + "?"

    cfg = SelfGuideConfig(labeler="vote", num_inputs=8, wave_size=8, num_samples=2, output_length_filter=False)
    assert cfg.uses("strip_input_echo")  # on by default since it was measured; off: the original filters
    on = synthesize(gen, ScriptedSampler(respond), cfg, PromptFormat(), seed=0)
    off = synthesize(gen, ScriptedSampler(respond), cfg.model_copy(update={"without": ["strip_input_echo"]}), PromptFormat(), seed=0)
    echoed = off.stats["input_echoes"]
    assert echoed == on.stats["input_echoes"] and 0 < echoed < 8
    assert off.stats["input_dropped"]["noise"] == echoed and on.stats["input_dropped"]["noise"] == 0
    assert len(on.train) == len(off.train) + echoed
    assert all(r["input"].startswith("Where no when is") for r in on.train)


def test_answers_the_vote_gives_to_many_inputs_are_dropped():
    gen = Task(name="overlap", instruction="Name a word both sentences share.",
               demos=[Demo("Sentence1: rain falls. Sentence2: rain helps.", "rain.")], type="generation")

    def respond(prompt, i, request):
        if "Write one new input" in prompt:
            # the lead "Sentence1:" already starts the answer
            return f" word{request.params.seed % 1000} here. Sentence2: word{request.params.seed % 1000} there."
        n = int(prompt.split("Sentence1: word")[-1].split(" ")[0])
        return " No, no, no!" if n % 3 else f" word{n}."  # a constant answer for two thirds of the inputs

    cfg = SelfGuideConfig(labeler="vote", num_inputs=9, wave_size=9, num_samples=3, output_length_filter=False)
    off = synthesize(gen, ScriptedSampler(respond), cfg.model_copy(update={"without": ["repeat_limit"]}), PromptFormat(), seed=0)
    assert sum(r["output"] == "No, no, no!" for r in off.train) >= 4  # the original method trains on it
    assert cfg.repeat_limit == 3  # the default drops it
    on = synthesize(gen, ScriptedSampler(respond), cfg, PromptFormat(), seed=0)
    assert on.train and all(r["output"] != "No, no, no!" for r in on.train)
    assert all(r["output"].startswith("word") for r in on.train)
    dropped = [d for d in on.dropped if d["stage"] == "repeated_answer"]
    assert len(dropped) == len(off.train) - len(on.train) == on.stats["annotation_dropped"]["repeated_answer"]
    assert on.stats["annotated"] + sum(on.stats["annotation_dropped"].values()) == on.stats["inputs_accepted"]


def test_a_generation_only_setting_does_not_rekey_classification_synthesis(tmp_path):
    """answer_repeat_limit keys a generation task's synthesis, never a classification task's (which does
    not read it), and at 0 (off) it keys nothing, so runs cached before the setting existed stay valid."""
    from selfguide_lite.config import load_config
    from selfguide_lite.methods import method_for
    from selfguide_lite.toy_models.headline import headline_task_path

    gen = tmp_path / "gen.json"
    gen.write_text('{"Definition": ["Fix it."], "Positive Examples": [{"input": "a b", "output": "a"}], '
                   '"Instances": [{"input": "c d", "output": ["c"]}]}')
    for task, task_type, rekeyed in ((headline_task_path(), None, False), (gen, "generation", True)):
        keys = [method_for(load_config(None, {"task": str(task), "task_type": task_type,
                                              "selfguide": {"answer_repeat_limit": n}})).settings() for n in (0, 3)]
        assert (keys[0] != keys[1]) == rekeyed
        assert "answer_repeat_limit" not in keys[0]
    echo = [method_for(load_config(None, {"task": str(gen), "task_type": "generation",
                                          "selfguide": {"without": [] if on else ["strip_input_echo"]}})).settings()
            for on in (False, True)]
    assert "strip_input_echo" not in echo[0] and echo[1]["strip_input_echo"] is True
    cls = method_for(load_config(None, {"task": str(headline_task_path())}))
    assert cls.settings() != method_for(load_config(None, {"task": str(headline_task_path()),
                                                           "selfguide": {"num_samples": 5}})).settings()


class ScoringSampler(ScriptedSampler):
    """Writes inputs like `scripted`; scores labels with a strong prior for "sports" that each input's
    keyword shifts a little (what a small student's label log-probabilities look like), and an input
    without a keyword not at all."""

    def score(self, requests):
        self.scored = getattr(self, "scored", 0) + len(requests)
        out = []
        for r in requests:
            new_input = r.prompt.rsplit("Input:", 1)[1]
            row = []
            for answer in r.continuations:
                label = answer.strip().removesuffix("</s>")
                row.append((-0.1 if label == "sports" else -3.0) + (0.8 if WORDS[label] in new_input else 0.0))
            out.append(row)
        return out


def test_batch_calibrated_labels_read_the_input_where_the_argmax_answers_one_label():
    cfg = SelfGuideConfig(num_inputs=30, wave_size=10, length_filter=False, balance=False, labeler="argmax")
    argmax = synthesize(TASK, ScoringSampler(scripted), cfg, PromptFormat(), seed=1)
    assert {r["output"] for r in argmax.train} == {"sports"}  # the prior wins every input
    sampler = ScoringSampler(scripted)
    calibrated = synthesize(TASK, sampler, cfg.model_copy(update={"labeler": "batch-calibrated"}), PromptFormat(), seed=1)
    truth = {r["id"]: next(lab for lab, w in WORDS.items() if w in r["input"]) for r in calibrated.train}
    assert len(calibrated.train) == 30 and all(r["output"] == truth[r["id"]] for r in calibrated.train)
    assert all(set(r["votes"]) == set(TASK.labels) and r["margin"] > 0 for r in calibrated.train)
    assert calibrated.stats["sampled_tokens"]["annotate"] == 0 and sampler.scored == 30
    # a margin no input reaches: every input dropped at its own stage, with the reason
    strict = synthesize(TASK, ScoringSampler(scripted), cfg.model_copy(update={"labeler": "batch-calibrated",
                                                                               "label_margin": 50.0}),
                        PromptFormat(), seed=1)
    assert strict.train == [] and strict.stats["annotation_dropped"]["low_margin"] == 30
    assert all("calibrated margin" in d["reason"] for d in strict.dropped if d["stage"] == "low_margin")


def _gold_task(tmp_path, **selfguide):
    import json

    from selfguide_lite.config import Config
    from selfguide_lite.methods.selfguide import SelfGuide

    doc = {"instruction": "Say the topic.", "labels": ["sports", "weather"],
           "examples": [{"input": "The Tigers win the final", "output": "sports"},
                        {"input": "Heavy rain hits Leeds", "output": "weather"}],
           "eval": [{"input": f"eval {i}", "output": ["sports", "weather"][i % 2]} for i in range(6)],
           "train": [{"input": f"The team story {i}" if i % 2 == 0 else f"A storm story {i}",
                      "output": ["sports", "weather"][i % 2]} for i in range(8)]}
    path = tmp_path / "t.json"
    path.write_text(json.dumps(doc))
    cfg = Config.model_validate({"task": str(path), "seed": 3, "selfguide": {"labeler": "vote", **selfguide},
                                 "eval": {"validation_size": 3, "test_size": 3}})
    return SelfGuide(cfg)


def gold_scripted(prompt: str, i: int, request) -> str:
    if "Write one new input" in prompt:
        label = re.search(r'correct output is "(\w+)"', prompt).group(1)
        return f" The {'team' if label == 'sports' else 'storm'} story number {request.params.seed % 1000}"
    return " sports" if "team" in prompt.rsplit("Input:", 1)[1] else " weather"


def test_gold_examples_join_every_rounds_training_rows_and_only_then_enter_the_cache_key(tmp_path):
    plain = _gold_task(tmp_path, num_inputs=8, wave_size=4, num_samples=3)
    gold = _gold_task(tmp_path, num_inputs=8, wave_size=4, num_samples=3, gold_per_label=2)
    assert "gold" not in plain.settings() and "gold_per_label" not in plain.settings()  # old runs keep their keys
    assert gold.settings()["gold"]["per_label"] == 2
    without = plain.synthesize(ScriptedSampler(gold_scripted), seed=4)
    result = gold.synthesize(ScriptedSampler(gold_scripted), seed=4)
    gold_rows = [r for r in result.train if r.get("source") == "gold"]
    assert len(gold_rows) == 4 and Counter(r["output"] for r in gold_rows) == {"sports": 2, "weather": 2}
    assert all(r["input"].endswith(tuple("01234567")) and r["id"].startswith("t-train") for r in gold_rows)
    assert result.train[len(gold_rows):] == without.train  # the self-labelled rows are the same
    assert result.stats["gold_rows"] == 4 and result.stats["train"] == len(without.train) + 4


def test_a_round_of_gold_examples_alone_writes_and_labels_nothing(tmp_path):
    method = _gold_task(tmp_path, num_inputs=0, gold_per_label=3, labeler="auto")
    assert method.checks_signal is False  # no self-labels to check
    sampler = ScriptedSampler(gold_scripted)
    result = method.synthesize(sampler, seed=1)
    assert sampler.requests == []
    assert [r["source"] for r in result.train] == ["gold"] * 6
    with pytest.raises(Exception, match="nothing to train on"):
        _gold_task(tmp_path, num_inputs=0)


def test_a_labeller_fitted_on_gold_without_gold_is_refused_before_anything_runs(tmp_path):
    method = _gold_task(tmp_path, labeler="gold-fitted")
    with pytest.raises(Exception, match="fitted on gold examples: set selfguide.gold_per_label"):
        method.check_inputs()
    _gold_task(tmp_path, labeler="gold-fitted", gold_per_label=2).check_inputs()  # with gold: accepted
