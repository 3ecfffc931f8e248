"""The procedural demo world: its families, its shipped target task, its pretraining corpus."""

import json
import random

from selfguide_lite.tasks import load_task
from selfguide_lite.toy_models.world import (
    FAMILIES,
    TARGET,
    TARGET_SHARE,
    Sentence,
    pretraining_corpus,
    random_sentence,
    target_task,
    world_task_path,
)


def test_six_families_answer_one_sentence_six_ways():
    s = Sentence("brave", "fox", 7, "the river", "at night")
    assert s.text == "The brave fox crosses the river at night."
    answers = {name: fam.answer(s) for name, fam in FAMILIES.items()}
    assert answers == {"sentiment": "positive", "kind": "animal", "night": "yes", "place": "the river",
                       "subject": "fox", "past": "The brave fox crossed the river at night."}
    assert len({f.instruction for f in FAMILIES.values()}) == len(FAMILIES) >= 6


def test_labels_cover_every_answer_of_classification_families():
    rng = random.Random(0)
    for fam in FAMILIES.values():
        if fam.labels:
            assert {fam.answer(random_sentence(rng)) for _ in range(300)} == set(fam.labels)


def test_shipped_task_file_is_the_generated_one():
    shipped = load_task(world_task_path())
    made = target_task()
    assert shipped.instruction == made.instruction == FAMILIES[TARGET].instruction
    assert shipped.demos == made.demos and shipped.instances == made.instances
    assert shipped.labels == ["positive", "negative"] and len(shipped.instances) == 100
    assert sum(i.outputs[0] == "positive" for i in shipped.instances) == 50
    data = json.loads(world_task_path().read_text())
    assert data["type"] == "classification"


def test_corpus_never_shows_an_evaluation_sentence_and_rarely_the_target():
    task = target_task()
    held_out = {d.input for d in task.demos} | {i.input for i in task.instances}
    docs = pretraining_corpus(3000, seed=1, exclude=held_out)
    assert not any(s in doc for doc in docs for s in held_out)
    share = sum(doc.startswith(FAMILIES[TARGET].instruction) for doc in docs) / len(docs)
    assert abs(share - TARGET_SHARE) < 0.01
    assert all(doc.rstrip().endswith("</s>") is False for doc in docs)  # EOS comes from the tokenizer
    assert all("\nOutput: " in doc for doc in docs)
