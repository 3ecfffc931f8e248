"""The tiny headline-topic student: a fast, real model for tests and the offline Self-Instruct demo.

A ~1M-parameter Llama pretrained for a few minutes (or seconds, in tests) on a procedurally generated
corpus in the headline task's own prompt formats (input-generation prompts followed by a headline of
the asked topic, and task prompts followed by a label that is right only ~75% of the time). It gives
every stage of the loop real material to work on quickly; it is not a good model, and its corpus
is shaped like the pipeline's prompts, so it says nothing about whether self-training helps. The
default demo uses the built-in real student; `tiny.pretrain` trains this one and the world's.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from importlib import resources
from pathlib import Path

from .errors import UserError
from .prompts import PromptFormat, input_generation_prompt, task_prompt
from .store import build_once
from .tasks import Task, load_task
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


# The default demo: the built-in real student on a real Natural Instructions task. The task was chosen
# by a rule fixed before any result was seen: of the seven classification tasks in the shared data,
# the one whose Self-Guide prompt (instruction + all demonstrations) is shortest in the student's
# tokens, since prompt length sets the cost of every stage on a CPU (task738: 121 tokens).
REAL_DEMO_TASK = "task738_perspectrum_classification.json"
# Counts sized so that the whole demo (import, round 0, one round, 100 validation + 100 test
# instances per evaluation) fits in 15 minutes on 2 CPU cores; every other setting is the default.
REAL_DEMO_PRESET = {
    "selfguide": {"num_inputs": 96, "wave_size": 32},
    "train": {"quantization": "none", "epochs": 2, "batch_size": 8},
    "loop": {"rounds": 1},
}
# The procedural world (`--demo world`): a tiny student pretrained here, rounds in a few minutes.
WORLD_PRESET = {
    "selfguide": {"wave_size": 50},
    "train": {"quantization": "none", "batch_size": 8, "learning_rate": 1e-3, "epochs": 3},
    "eval": {"validation_size": 50, "test_size": 50},
    "engine": {"n_ctx": 2048},
}
DEMO_METHOD = {"smollm2": "self-guide", "world": "self-guide", "self-instruct": "self-instruct"}  # demo -> method
DEMOS = tuple(DEMO_METHOD)
DEFAULT_DEMO = {"self-guide": "smollm2", "self-instruct": "self-instruct"}  # per method, with no --demo


def real_demo_task_path() -> Path:
    return Path(str(resources.files("selfguide_lite") / "data" / REAL_DEMO_TASK))


def demo_model_dir() -> Path:
    """Where the tiny headline student is built (Self-Instruct demo, `demo-model`)."""
    from .models import models_dir

    return models_dir() / "demo-model"


def world_student_dir() -> Path:
    from .models import models_dir

    return models_dir() / "world-student"


def demo_setup(name: str | None, method: str | None, overrides: dict, log: Callable[[str], None]) -> dict:
    """Fill `overrides` (student, task, run directory) for a built-in demo; returns its settings preset."""
    from .methods import method_class

    if name is not None and name not in DEMOS:
        raise UserError(f"--demo must be one of {', '.join(DEMOS)}, not {name!r}")
    method_name = method_class(method or (DEMO_METHOD[name] if name else "self-guide")).name
    name = name or DEFAULT_DEMO[method_name]
    if DEMO_METHOD[name] != method_name:
        raise UserError(f"--demo {name} runs --method {DEMO_METHOD[name]}, not {method_name}")
    overrides["loop"]["method"] = method_name
    if name == "self-instruct":
        log("offline Self-Instruct demo: a tiny (~1M parameter) Llama student built here; it shows every stage "
            "running for real, it is not a useful model.")
        overrides["model"] = str(build_demo_model(demo_model_dir(), log=log))
        overrides["seed_tasks"] = overrides.get("seed_tasks") or str(seed_pool_path())
        overrides["eval_tasks"] = overrides.get("eval_tasks") or [str(demo_task_path())]
        overrides["run_dir"] = overrides.get("run_dir") or "runs/demo-self-instruct"
        return WORLD_PRESET
    if name == "smollm2":
        from .builtin_students import DEFAULT_STUDENT

        log("offline demo: Self-Guide with the built-in student SmolLM2-135M-Instruct on Natural Instructions "
            "task738 (perspectrum: does a perspective support or undermine a claim?).\nFor your own task: "
            "python -m selfguide_lite loop --task TASK.json --model smollm2-135m-instruct (or any GGUF / HF model)")
        overrides["model"] = DEFAULT_STUDENT
        overrides["task"] = str(real_demo_task_path())
        overrides["run_dir"] = overrides.get("run_dir") or "runs/demo"
        return REAL_DEMO_PRESET
    if name == "world":
        from .world import build_world_student, world_task_path

        log("procedural-world demo: a small Llama student pretrained here on six sentence tasks "
            "(selfguide_lite/world.py), then Self-Guide on the task it saw least (sentiment).")
        overrides["model"] = str(build_world_student(world_student_dir(), log=log))
        overrides["task"] = str(world_task_path())
        overrides["run_dir"] = overrides.get("run_dir") or "runs/demo-world"
    return WORLD_PRESET


def demo_task_path() -> Path:
    return Path(str(resources.files("selfguide_lite") / "data" / "demo_task.yaml"))


def seed_pool_path() -> Path:
    """The small Self-Instruct seed pool written for this project (offline demo and tests)."""
    return Path(str(resources.files("selfguide_lite") / "data" / "seed_tasks_demo.jsonl"))


def demo_task() -> Task:
    return load_task(demo_task_path())


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


def build_demo_model(out: Path, size: str = "tiny", seconds: float = 150.0, seed: int = 0,
                     log: Callable[[str], None] = print) -> Path:
    """Build (or reuse, when already built with the same settings) the demo student at `out`."""
    recipe = {"size": size, "seconds": seconds, "seed": seed, "task": _task_digest(), "version": 2}

    def build(tmp: Path) -> dict:
        docs = corpus(demo_task(), n_docs=6000, seed=seed + 1)
        log(f"building the demo student ({size}) at {out}: tokenizer, random init, {seconds:.0f}s of pretraining")
        model, tok = build_tiny_model(tmp, docs, arch="llama", shape=SHAPES[size], seed=seed)
        stats = pretrain(model, tok, docs, seconds, log, seed=seed)
        save_checkpoint(model, tok, tmp)
        log(f"demo student ready: {stats['steps']} steps, final loss {stats['final_loss']}")
        return stats

    return build_once(out, recipe, build, log, "demo student")


def _task_digest() -> str:
    return hashlib.sha256(demo_task_path().read_bytes()).hexdigest()[:16]
