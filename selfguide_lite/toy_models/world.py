"""A small procedural world where self-training can be measured on a CPU (the default demo).

Every input is a sentence built from a fixed lexicon: "The brave fox crosses the river at night."
Six task families read the same sentences and differ only in their instruction and in the answer
they want (label words, a copied phrase, a rewritten sentence), so a student has to read the
instruction and the demonstrations to know which answer, in which format, is wanted:

| family    | instruction (short)                                   | answer                         |
|-----------|-------------------------------------------------------|--------------------------------|
| sentiment | is the subject described in a good or a bad way?      | positive / negative            |
| kind      | what is the subject?                                  | animal / person / vehicle      |
| night     | does this happen at night?                            | yes / no                       |
| place     | where does it happen?                                 | the place phrase ("the river") |
| subject   | copy the subject noun                                 | the noun ("fox")               |
| past      | rewrite the sentence in the past tense                | the sentence, verb in the past |

The demo target is **sentiment**. Design decisions, fixed before any number was seen:
- The student is pretrained on Natural-Instructions-style prompts (instruction, 2-4 demonstrations,
  input -> output) of all six families. The target family is rare there: 3 % of the documents,
  against about 19 % for each other family, like a skill a base model has seen little of. Nothing
  else about the target is special: its documents are as clean as the others.
- No sentence of the target's evaluation set (or its demonstrations) occurs anywhere in pretraining.
- The world knows nothing of the pipeline: no document is shaped like an input-generation request,
  a vote or a filter. What the student can do when asked to write new inputs comes from having
  seen many sentences, not from practice at that prompt.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..prompts import PromptFormat, task_prompt
from ..store import atomic_write_text
from ..tasks import Demo, Instance, Task

NOUNS = {
    "animal": ["cat", "dog", "horse", "owl", "fox", "goat", "bear", "duck"],
    "person": ["teacher", "farmer", "doctor", "pilot", "baker", "singer", "nurse", "sailor"],
    "vehicle": ["bus", "truck", "boat", "train", "tractor", "van", "ship", "plane"],
}
ADJECTIVES = {
    "positive": ["happy", "brave", "kind", "gentle", "lucky", "clever", "calm", "cheerful"],
    "negative": ["angry", "lazy", "rude", "clumsy", "grumpy", "noisy", "careless", "nervous"],
}
VERBS = [("visits", "visited"), ("passes", "passed"), ("reaches", "reached"), ("leaves", "left"),
         ("finds", "found"), ("watches", "watched"), ("follows", "followed"), ("crosses", "crossed")]
PLACES = ["the river", "the market", "the bridge", "the farm", "the station", "the school", "the harbor",
          "the forest", "the castle", "the village", "the park", "the mill"]
TIMES = {"at night": "yes", "at midnight": "yes", "in the morning": "no", "at noon": "no", "in the evening": "no",
         "at dawn": "no"}


@dataclass(frozen=True)
class Sentence:
    adjective: str
    noun: str
    verb: int
    place: str
    time: str

    @property
    def text(self) -> str:
        return f"The {self.adjective} {self.noun} {VERBS[self.verb][0]} {self.place} {self.time}."


@dataclass(frozen=True)
class Family:
    name: str
    instruction: str
    answer: Callable[[Sentence], str]
    labels: tuple[str, ...] = ()


def _valence(s: Sentence) -> str:
    return "positive" if s.adjective in ADJECTIVES["positive"] else "negative"


def _kind(s: Sentence) -> str:
    return next(k for k, nouns in NOUNS.items() if s.noun in nouns)


FAMILIES = {
    "sentiment": Family("sentiment", "Is the subject of the sentence described in a good or a bad way? "
                        "Answer positive or negative.", _valence, ("positive", "negative")),
    "kind": Family("kind", "What is the subject of the sentence? Answer animal, person or vehicle.", _kind,
                   ("animal", "person", "vehicle")),
    "night": Family("night", "Does this happen at night? Answer yes or no.", lambda s: TIMES[s.time], ("yes", "no")),
    "place": Family("place", "Where does it happen? Answer with the place from the sentence.", lambda s: s.place),
    "subject": Family("subject", "Copy the subject noun of the sentence.", lambda s: s.noun),
    "past": Family("past", "Rewrite the sentence in the past tense.",
                   lambda s: s.text.replace(f" {VERBS[s.verb][0]} ", f" {VERBS[s.verb][1]} ")),
}
TARGET = "sentiment"
TARGET_SHARE = 0.03  # of pretraining documents; the other five families share the rest equally


def random_sentence(rng: random.Random) -> Sentence:
    valence = rng.choice(list(ADJECTIVES))
    kind = rng.choice(list(NOUNS))
    return Sentence(rng.choice(ADJECTIVES[valence]), rng.choice(NOUNS[kind]), rng.randrange(len(VERBS)),
                    rng.choice(PLACES), rng.choice(list(TIMES)))


def target_task(n_eval: int = 100, seed: int = 7) -> Task:
    """The demo target (sentiment) with 4 demonstrations and `n_eval` held-out sentences, balanced."""
    rng = random.Random(seed)
    fam = FAMILIES[TARGET]
    seen: set[str] = set()

    def fresh(valence: str) -> Sentence:
        while True:
            s = random_sentence(rng)
            if _valence(s) == valence and s.text not in seen:
                seen.add(s.text)
                return s

    demos = [Demo(s.text, fam.answer(s)) for s in (fresh("positive"), fresh("negative"), fresh("negative"),
                                                    fresh("positive"))]
    instances = [Instance(f"{TARGET}-{n:03d}", s.text, (fam.answer(s),))
                 for n, s in enumerate(fresh(fam.labels[n % 2]) for n in range(n_eval))]
    return Task(f"world_{TARGET}", fam.instruction, demos, "classification", list(fam.labels), instances)


def world_task_path() -> Path:
    """The target task as shipped (data/world_sentiment.json; `write_task_file(target_task(), ...)` made it)."""
    from importlib import resources

    return Path(str(resources.files("selfguide_lite") / "data" / "world_sentiment.json"))


def write_task_file(task: Task, path: Path) -> Path:
    """Our own JSON task format, so the loop (and a user) reads the demo task like any other."""
    doc = {"name": task.name, "instruction": task.instruction, "type": task.type, "labels": task.labels,
           "examples": [{"input": d.input, "output": d.output} for d in task.demos],
           "eval": [{"id": i.id, "input": i.input, "output": i.outputs[0]} for i in task.instances]}
    return atomic_write_text(path, json.dumps(doc, indent=1) + "\n")


def pretraining_corpus(n_docs: int, seed: int, exclude: set[str]) -> list[str]:
    """Natural-Instructions-style documents over all families: instruction, 2-4 demonstrations and
    one input, followed by its answer. Sentences in `exclude` (the target's eval and demo inputs)
    never appear."""
    rng = random.Random(seed)
    others = [f for f in FAMILIES if f != TARGET]
    fmt = PromptFormat()

    def sentence() -> Sentence:
        while (s := random_sentence(rng)).text in exclude:
            pass
        return s

    docs = []
    for _ in range(n_docs):
        fam = FAMILIES[TARGET if rng.random() < TARGET_SHARE else rng.choice(others)]
        demos = [sentence() for _ in range(rng.randint(2, 4))]
        task = Task(fam.name, fam.instruction, [Demo(s.text, fam.answer(s)) for s in demos],
                    "classification" if fam.labels else "generation", list(fam.labels))
        query = sentence()
        docs.append(fmt.render(task_prompt(task, query.text)) + fmt.answer(fam.answer(query)))
    return docs


# ~1.1M parameters, 3000 steps of 16 documents (~5M tokens): about 8 minutes on 2 CPU cores, inside the
# demo's 10-minute pretraining budget. A step count, not a time budget, so the student is the same
# whatever else the machine is doing.
STUDENT_RECIPE = {"shape": "tiny", "docs": 20000, "steps": 3000, "batch_size": 16, "lr": 3e-3, "vocab": 512,
                  "world": 1}


def build_world_student(out: Path, seed: int = 0, log: Callable[[str], None] = print, **recipe_overrides) -> Path:
    """Pretrain (or reuse, when built with the same recipe) the demo student on the world's corpus."""
    from ..progress import quiet_libraries
    from ..store import build_once
    from .tiny import SHAPES, build_tiny_model, pretrain, save_checkpoint

    quiet_libraries()
    recipe = {**STUDENT_RECIPE, **recipe_overrides, "seed": seed, "version": 2}

    def build(tmp: Path) -> dict:
        task = target_task()
        exclude = {d.input for d in task.demos} | {i.input for i in task.instances}
        docs = pretraining_corpus(recipe["docs"], seed + 1, exclude)
        log(f"building the world student ({recipe['shape']}) at {out}: tokenizer, random init, "
            f"{recipe['steps']} pretraining steps on {len(docs)} documents")
        model, tok = build_tiny_model(tmp, docs, arch="llama", shape=SHAPES[recipe["shape"]], vocab_size=recipe["vocab"],
                                      seed=seed)
        stats = pretrain(model, tok, docs, None, log, seed=seed, steps=recipe["steps"], batch_size=recipe["batch_size"],
                         lr=recipe["lr"])
        save_checkpoint(model, tok, tmp)
        log(f"world student ready: {stats['steps']} steps in {stats['seconds']:.0f}s, final loss {stats['final_loss']}")
        return stats

    return build_once(out, recipe, build, log, "world student")
