import json

import pytest

from selfguide_lite.errors import UserError
from selfguide_lite.tasks import load_seed_pool, load_task
from tests.helpers import shared_file


def test_natural_instructions_classification_labels_in_first_seen_order():
    path = shared_file("natural-instructions", "task190_snli_classification.json")
    task = load_task(path)
    data = json.loads(path.read_text())
    assert task.type == "classification"
    first_seen = list(dict.fromkeys(i["output"][0] for i in data["Instances"]))
    assert task.labels[: len(first_seen)] == first_seen
    assert set(task.labels) >= {d["output"] for d in data["Positive Examples"]}
    assert task.instruction == data["Definition"][0].strip()
    assert len(task.demos) == len(data["Positive Examples"])


def test_natural_instructions_generation_and_override():
    path = shared_file("natural-instructions", "task036_qasc_topic_word_to_generate_related_fact.json")
    assert load_task(path).type == "generation"
    assert load_task(path).labels == []
    forced = load_task(path, task_type="classification", labels=["a", "b"])
    assert forced.type == "classification" and forced.labels == ["a", "b"]


def test_splits_skip_demo_inputs_and_take_their_sizes(tmp_path):
    doc = {
        "instruction": "Say yes or no.",
        "examples": [{"input": "is it?", "output": "yes"}],
        "eval": [{"input": "is it?", "output": "yes"}] + [{"input": f"q{i}", "outputs": ["no", "nope"]} for i in range(5)],
    }
    path = tmp_path / "t.json"
    path.write_text(json.dumps(doc))
    task = load_task(path)
    assert task.type == "classification" and task.labels == ["yes", "no"]
    inst = task.split("validation", 3, 2)
    assert [i.input for i in inst] == ["q0", "q1", "q2"]
    assert inst[0].outputs == ("no", "nope")
    assert [i.input for i in task.split("test", 3, 2)] == ["q3", "q4"]


def test_own_yaml_task_with_declared_type(tmp_path):
    path = tmp_path / "task.yaml"
    path.write_text("instruction: Summarise.\ntype: generation\nexamples:\n  - {input: a long text, output: short}\n")
    task = load_task(path)
    assert task.type == "generation" and task.demos[0].output == "short"


@pytest.mark.parametrize(
    "content",
    ["[1, 2]", "{\"foo\": 1}", "instruction: x\n", "{\"Definition\": 5}", ":\n  - [unclosed"],
)
def test_bad_task_files_are_user_errors(tmp_path, content):
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    with pytest.raises(UserError):
        load_task(path)


def test_missing_task_file():
    with pytest.raises(UserError, match="not found"):
        load_task("/no/such/task.json")


def test_seed_pool_loads_real_file_and_rejects_bad_lines(tmp_path):
    seeds = load_seed_pool(shared_file("self-instruct", "seed_tasks.jsonl"))
    assert len(seeds) == 175
    assert sum(s.is_classification for s in seeds) > 10
    bad = tmp_path / "s.jsonl"
    bad.write_text('{"id": "x"}\n')
    with pytest.raises(UserError, match="s.jsonl:1: missing or empty .instruction."):
        load_seed_pool(bad)


def test_the_answer_cap_never_reads_the_test_references(tmp_path):
    """Validation decides, test is only reported: the evaluation's max new tokens come from the
    demonstrations and the validation references, even when the test references are longer."""
    from selfguide_lite.config import EvalConfig
    from selfguide_lite.evaluate import answer_cap, evaluate
    from tests.helpers import ScriptedSampler

    long_answer = " ".join(["word"] * 40)
    doc = {
        "instruction": "Summarise.", "type": "generation",
        "examples": [{"input": "a text", "output": "three short words"}],
        "eval": [{"input": f"v{i}", "output": "five words in this one"} for i in range(3)]
        + [{"input": f"t{i}", "output": long_answer} for i in range(2)],
    }
    path = tmp_path / "t.json"
    path.write_text(json.dumps(doc))
    task = load_task(path)
    cfg = EvalConfig(validation_size=3, test_size=2)
    sampler = ScriptedSampler(lambda prompt, i, request: "an answer")
    assert [i.outputs[0] for i in task.split("test", 3, 2)] == [long_answer, long_answer]
    assert answer_cap(task, sampler, cfg) == 10  # 2 x the 5-word validation answer; the test's 40 words unread
    evaluate(task, sampler, cfg)
    assert {r.params.max_tokens for r in sampler.requests} == {10}


def test_gold_examples_of_a_natural_instructions_task_lie_outside_every_held_out_split():
    """Drawn per label with a seed from instances no split holds: disjoint from validation, test and the
    signal check's pool at the sizes given, none a demonstration, K of each label, the same for one seed."""
    task = load_task(shared_file("natural-instructions", "task190_snli_classification.json"))
    gold = task.gold(16, seed=0, validation_size=100, test_size=100, signal_size=300)
    held = {i.input for name in ("validation", "test", "signal") for i in task.split(name, 100, 100, 300)}
    assert held and not held & {g.input for g in gold}
    assert not {d.input for d in task.demos} & {g.input for g in gold}
    # this file's instances carry C and N only (E appears in a demonstration): E is passed over
    assert {lab: sum(g.outputs[0] == lab for g in gold) for lab in task.labels} == {"C": 16, "N": 16, "E": 0}
    assert gold == task.gold(16, seed=0, validation_size=100, test_size=100, signal_size=300)
    assert gold != task.gold(16, seed=1, validation_size=100, test_size=100, signal_size=300)
    assert task.gold(0, seed=0) == []


def test_gold_examples_from_an_own_task_file_and_the_overlap_it_refuses(tmp_path):
    doc = {
        "instruction": "Say yes or no.", "labels": ["yes", "no"],
        "examples": [{"input": "is it?", "output": "yes"}],
        "eval": [{"input": f"q{i}", "output": "no" if i % 2 else "yes"} for i in range(6)],
        "train": [{"input": f"t{i}", "output": "no" if i % 2 else "yes"} for i in range(6)],
    }
    path = tmp_path / "t.json"
    path.write_text(json.dumps(doc))
    gold = load_task(path).gold(2, seed=0)
    assert sorted(g.outputs[0] for g in gold) == ["no", "no", "yes", "yes"]
    assert all(g.input.startswith("t") for g in gold)  # from train:, never from eval:

    doc["train"][3]["input"] = "q2"  # also an evaluation input
    path.write_text(json.dumps(doc))
    with pytest.raises(UserError, match=r"train\[3\]: its input is also eval\[2\]"):
        load_task(path)
    doc["train"][3] = {"input": "t3", "output": "maybe"}  # not a label
    path.write_text(json.dumps(doc))
    with pytest.raises(UserError, match=r"train\[3\]: output 'maybe' is not one of the labels"):
        load_task(path)
    doc["train"] = [{"input": "t0", "output": "yes"}]  # no example of 'no'
    path.write_text(json.dumps(doc))
    with pytest.raises(UserError, match="no gold example of the label.s. no in its train: list"):
        load_task(path).gold(4, seed=0)
