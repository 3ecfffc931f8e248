"""The built-in demos (`loop` with no --task/--model): which student, task and settings each one runs.

smollm2 (the default): the built-in real student on a real Natural Instructions task; world: the
procedural world's student (toy_models/world.py); self-instruct: the tiny headline student
(toy_models/headline.py) with the project's small seed pool. The toy students are built here on first use.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import resources
from pathlib import Path

from .errors import UserError

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
    from .toy_models.headline import build_headline_student, headline_task_path

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
        overrides["model"] = str(build_headline_student(demo_model_dir(), log=log))
        overrides["seed_tasks"] = overrides.get("seed_tasks") or str(seed_pool_path())
        overrides["eval_tasks"] = overrides.get("eval_tasks") or [str(headline_task_path())]
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
        from .toy_models.world import build_world_student, world_task_path

        log("procedural-world demo: a small Llama student pretrained here on six sentence tasks "
            "(selfguide_lite/toy_models/world.py), then Self-Guide on the task it saw least (sentiment).")
        overrides["model"] = str(build_world_student(world_student_dir(), log=log))
        overrides["task"] = str(world_task_path())
        overrides["run_dir"] = overrides.get("run_dir") or "runs/demo-world"
    return WORLD_PRESET


def seed_pool_path() -> Path:
    """The small Self-Instruct seed pool written for this project (offline demo and tests)."""
    return Path(str(resources.files("selfguide_lite") / "data" / "seed_tasks_demo.jsonl"))
