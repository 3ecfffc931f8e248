"""What differs between methods, behind one interface; the loop, CLI and report ask a `Method`.

A method decides how a round's training data is synthesised (and which files that writes), how
prompts are rendered for training and evaluation (the student's chat template or a fixed plain
template), which tasks it is evaluated on and with which prompt, and how its synthesis funnel reads
in the report. Adding a method is one new module under `methods/` that subclasses `Method` and
registers itself with `@register` (every module here is imported when a method is looked up).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..config import Config
from ..engine.sampler import ModelInfo, Sampler
from ..errors import UserError
from ..prompts import PromptFormat
from ..tasks import Task, load_task

PromptFn = Callable[[Task, str], str]


@dataclass(frozen=True)
class ClassBalance:
    labelled: dict[str, int]  # rows per label as the vote labelled them
    kept: dict[str, int]  # rows per label after balancing
    missing: list[str]  # labels the vote never produced


@dataclass
class SynthResult:
    """One round's synthesis: training records, every drop with its stage and reason, funnel counts."""

    train: list[dict[str, Any]] = field(default_factory=list)
    dropped: list[dict[str, Any]] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)  # wall time per sampling step (not in stats.json:
    # a resumed round must write byte-identical files; the stage record in the manifest keeps it)


def stage_seed(base: int, stage: int, index: int) -> int:
    """A per-request seed that depends only on the run seed and the request's identity."""
    return (base * 1_000_003 + stage * 100_003 + index) % (2**31 - 1)


def funnel_counts(counts: dict[str, int], stages: tuple[str, ...]) -> dict[str, int]:
    """Drops per stage, in the stage list's order, for `stats.json` and the report's funnel. A drop under
    a stage missing from the list is a programming error, raised rather than silently left out."""
    unknown = sorted(set(counts) - set(stages))
    if unknown:
        raise ValueError(f"drop stage(s) {unknown} missing from the stage list {stages}")
    return {stage: counts.get(stage, 0) for stage in stages}


class Method(ABC):
    """One self-training method. Instances hold the run's configuration."""

    name: ClassVar[str]
    # Command-line flags that only this method reads (a flag of another method is refused).
    own_flags: ClassVar[tuple[str, ...]] = ()
    # Whether `check_signal` checks anything (the loop then runs it as a stage before every round).
    checks_signal: ClassVar[bool] = False

    def __init__(self, cfg: Config, tasks: list[Task] | None = None) -> None:
        self.cfg = cfg
        self._tasks = tasks  # read once (`eval_tasks`), then handed on (`with_labeller`)

    # --- inputs -------------------------------------------------------------------------------
    @abstractmethod
    def check_inputs(self) -> None:
        """Fail early (one error line) when the configuration lacks what this method reads."""

    @abstractmethod
    def input_files(self) -> list[str]:
        """Files whose content keys the synthesis and evaluation stages (task files, seed pool)."""

    @abstractmethod
    def default_run_name(self) -> str:
        """runs/<this> when no --run-dir is given."""

    def eval_tasks(self) -> list[Task]:
        """The tasks a student of this method is scored on (validation and test): read from their files
        once, then every stage takes them from here."""
        if self._tasks is None:
            self._tasks = self.load_tasks()
        return self._tasks

    def load_tasks(self) -> list[Task]:
        return [load_task(p, self.cfg.task_type, self.cfg.labels) for p in self.eval_task_files()]

    @abstractmethod
    def eval_task_files(self) -> list[str]: ...

    # --- one round's data ---------------------------------------------------------------------
    @abstractmethod
    def settings(self) -> dict[str, Any]:
        """The configuration section that shapes synthesis (part of its stage's cache key)."""

    @abstractmethod
    def synthesize(self, sampler: Sampler, seed: int) -> SynthResult:
        """One round's data from the student behind `sampler` (pure: no files)."""

    def check_signal(self, sampler: Sampler, seed: int) -> dict[str, Any] | None:
        """Before a round trains: whether the student's own labels carry signal (methods/label_signal.py).
        A report with `signal`, `chosen` (the labeller for the round) and `line` (in words); None: this
        method has no such check."""
        return None

    def with_labeller(self, name: str) -> Method:
        """This method with the labeller the signal check chose (methods without labellers: itself)."""
        return self

    def extra_outputs(self, result: SynthResult) -> dict[str, list[dict[str, Any]]]:
        """Files beside train/dropped/stats that this method writes (name -> records)."""
        return {}

    def training_rows(self, result: SynthResult) -> list[dict[str, Any]]:
        """`{"prompt", "completion"}` rows (the user text; training renders it through `prompt_format`)."""
        return result.train

    # --- rendering and evaluation -------------------------------------------------------------
    def uses_chat_template(self) -> bool:
        """Whether training and evaluation render through the student's chat template."""
        return True

    def prompt_format(self, info: ModelInfo) -> PromptFormat:
        """How training rows and evaluation prompts are rendered for a student with this `info`."""
        template = info.chat_template if self.uses_chat_template() else None
        return PromptFormat(template or None, info.bos_token, info.eos_token)

    @abstractmethod
    def eval_prompt(self) -> tuple[PromptFn, tuple[str, ...]]:
        """The evaluation prompt for one instance, and extra stop strings."""

    # --- report -------------------------------------------------------------------------------
    @staticmethod
    @abstractmethod
    def funnel_steps(stats: dict[str, Any]) -> list[tuple[str, int]]:
        """(step, rows remaining after it), read from this method's `stats.json`."""

    @staticmethod
    def class_balance(stats: dict[str, Any], dropped: list[dict[str, Any]]) -> ClassBalance | None:
        """Rows per label before and after balancing, for the report; None when the method has no labels."""
        return None


METHODS: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    METHODS[cls.name] = cls
    return cls


def method_class(name: str) -> type[Method]:
    _load_builtin_methods()
    if name not in METHODS:
        raise UserError(f"--method must be one of {', '.join(sorted(METHODS))}, not {name!r} (loop.method in a config file)")
    return METHODS[name]


def method_for(cfg: Config) -> Method:
    return method_class(cfg.loop.method)(cfg)


def method_of_stats(stats: dict[str, Any]) -> type[Method]:
    """The method that wrote a `stats.json` (older Self-Guide stats carry no name)."""
    return method_class(stats.get("method", "self-guide"))


def all_flags() -> dict[str, str]:
    """Every method-specific flag -> the method that reads it."""
    _load_builtin_methods()
    return {flag: name for name, cls in METHODS.items() for flag in cls.own_flags}


def _load_builtin_methods() -> None:
    """Import every module of this package: each registers its method, so a new method is one new file."""
    import importlib
    import pkgutil
    from pathlib import Path

    for module in pkgutil.iter_modules([str(Path(__file__).parent)]):
        if module.name != "base":
            importlib.import_module(f"{__package__}.{module.name}")
