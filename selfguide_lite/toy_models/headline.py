"""The tiny headline-topic student: a fast, real model for tests and the offline Self-Instruct demo.

A ~1M-parameter Llama pretrained for a few minutes (or seconds, in tests) on a procedurally generated
corpus in the headline task's own prompt formats (input-generation prompts followed by a headline of
the asked topic, and task prompts followed by a label that is right only ~75% of the time). It gives
every stage of the loop real material to work on quickly; it is not a good model, and its corpus
is shaped like the pipeline's prompts, so it says nothing about whether self-training helps.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from importlib import resources
from pathlib import Path

from ..prompts import PromptFormat, input_generation_prompt, task_prompt
from ..store import build_once
from ..tasks import Task, load_task
from .tiny import SHAPES, build_tiny_model, pretrain, save_checkpoint

DEMO_LABELS = ("sports", "weather", "food")
_PLACES = ["Leeds", "Porto", "Oslo", "Lyon", "Austin", "Kyoto", "Cork", "Perth", "Nantes", "Dayton"]
_WHEN = ["", " on Sunday", " this week", " tonight", " after a long wait", " again", " at last"]
_TOPICS: dict[str, tuple[list[str], list[str], list[str]]] = {
    "sports": (
        ["The Tigers", "The Rovers", "City", "United", "The Falcons", "The home team", "The champions",
         "A young striker", "The captain", "The old club"],
        ["win", "lose", "score twice in", "draw in", "celebrate after", "are knocked out of", "reach"],
        ["the final", "the derby", "the league match", "the cup tie", "overtime", "the season opener",
         "the semifinal"],
    ),
    "weather": (
        ["Heavy rain", "A storm", "Thick fog", "Strong wind", "Snow", "A heat wave", "Sunny skies", "Hail",
         "A cold front"],
        ["expected in", "hits", "moves toward", "clears from", "returns to", "sweeps across", "floods"],
        _PLACES,
    ),
    "food": (
        ["A new bakery", "The chef", "A family restaurant", "The street market", "A noodle bar", "The cafe",
         "A pizza oven"],
        ["opens in", "serves fresh pasta in", "wins praise in", "adds a spicy menu in", "bakes bread for",
         "brings tacos to"],
        _PLACES,
    ),
}
LABEL_NOISE = 0.25  # share of corpus task examples whose label is wrong


def headline(label: str, rng: random.Random) -> str:
    subjects, verbs, objects = _TOPICS[label]
    return f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)}{rng.choice(_WHEN)}"


def headline_task_path() -> Path:
    return Path(str(resources.files("selfguide_lite") / "data" / "demo_task.yaml"))


def headline_task() -> Task:
    return load_task(headline_task_path())


def corpus(task: Task, n_docs: int, seed: int) -> list[str]:
    """Documents in the demo task's own prompt formats, never containing an evaluation input."""
    rng = random.Random(seed)
    held_out = {i.input for i in task.instances}
    fmt = PromptFormat()

    def fresh(label: str) -> str:
        while (h := headline(label, rng)) in held_out:
            pass
        return h

    docs = []
    for _ in range(n_docs):
        label = rng.choice(DEMO_LABELS)
        if rng.random() < 0.4:
            context = [fresh(rng.choice(DEMO_LABELS)) for _ in range(rng.randint(0, 10))]
            target = label if rng.random() < 0.8 else None
            prompt = fmt.render(input_generation_prompt(task, context, target))
            docs.append(prompt + fmt.answer(fresh(label)))
        else:
            shown = label if rng.random() >= LABEL_NOISE else rng.choice([x for x in DEMO_LABELS if x != label])
            docs.append(fmt.render(task_prompt(task, fresh(label))) + fmt.answer(shown))
    return docs


def build_headline_student(out: Path, size: str = "tiny", seconds: float = 150.0, seed: int = 0,
                     log: Callable[[str], None] = print) -> Path:
    """Build (or reuse, when already built with the same settings) the demo student at `out`."""
    recipe = {"size": size, "seconds": seconds, "seed": seed, "task": _task_digest(), "version": 2}

    def build(tmp: Path) -> dict:
        docs = corpus(headline_task(), n_docs=6000, seed=seed + 1)
        log(f"building the demo student ({size}) at {out}: tokenizer, random init, {seconds:.0f}s of pretraining")
        model, tok = build_tiny_model(tmp, docs, arch="llama", shape=SHAPES[size], seed=seed)
        stats = pretrain(model, tok, docs, seconds, log, seed=seed)
        save_checkpoint(model, tok, tmp)
        log(f"demo student ready: {stats['steps']} steps, final loss {stats['final_loss']}")
        return stats

    return build_once(out, recipe, build, log, "demo student")


def _task_digest() -> str:
    return hashlib.sha256(headline_task_path().read_bytes()).hexdigest()[:16]
