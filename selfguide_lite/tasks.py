"""Tasks (Self-Guide) and seed pools (Self-Instruct), and their loaders (SPEC 1.1, 1.2).

A task file's format is detected by its content, never by its name: a JSON object with a
`Definition` key is a Natural Instructions V2 task; an object with an `instruction` key (YAML or
JSON) is one of our own task files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from .errors import UserError

TaskType = Literal["classification", "generation"]
MAX_LABELS = 10
DEFAULT_EVAL_LIMIT = 100


@dataclass(frozen=True)
class Demo:
    input: str
    output: str


@dataclass(frozen=True)
class Instance:
    id: str
    input: str
    outputs: tuple[str, ...]


@dataclass
class Task:
    name: str
    instruction: str
    demos: list[Demo]
    type: TaskType
    labels: list[str] = field(default_factory=list)
    instances: list[Instance] = field(default_factory=list)

    @property
    def is_classification(self) -> bool:
        return self.type == "classification"

    def eval_instances(self, limit: int | None = DEFAULT_EVAL_LIMIT) -> list[Instance]:
        """The official protocol: the first `limit` instances, skipping any that repeat a demo input."""
        demo_inputs = {d.input.strip() for d in self.demos}
        kept = [i for i in self.instances if i.input.strip() not in demo_inputs]
        return kept if limit is None else kept[:limit]


@dataclass(frozen=True)
class SeedTask:
    id: str
    name: str
    instruction: str
    instances: tuple[Demo, ...]
    is_classification: bool


def _read_structured(path: Path) -> object:
    if not path.is_file():
        raise UserError(f"task file not found: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: neither valid JSON nor valid YAML ({exc.__class__.__name__})") from None


def _infer_type_and_labels(
    first_refs: list[str], demo_outputs: list[str], task_type: str | None, labels: list[str] | None
) -> tuple[TaskType, list[str]]:
    """SPEC 1.1: classification when the first references take at most 10 distinct values.

    The label set is those values in first-seen order; a label that only the demos show (instances
    are often a filtered sample) is appended after them so the student may still produce it.
    """
    if task_type is not None and task_type not in ("classification", "generation"):
        raise UserError(f"--task-type must be 'classification' or 'generation', not {task_type!r}")
    observed = list(dict.fromkeys(r.strip() for r in first_refs)) if first_refs else []
    if not observed:
        observed = list(dict.fromkeys(o.strip() for o in demo_outputs))
    inferred: TaskType = "classification" if 0 < len(observed) <= MAX_LABELS else "generation"
    final_type: TaskType = task_type or ("classification" if labels else inferred)  # type: ignore[assignment]
    if final_type == "generation":
        return "generation", []
    if labels:
        return "classification", [lab.strip() for lab in labels if lab.strip()]
    for out in demo_outputs:
        if out.strip() not in observed:
            observed.append(out.strip())
    if not observed:
        raise UserError("classification task without labels: give --labels or examples")
    return "classification", observed


def _load_natural_instructions(data: dict, name: str, task_type: str | None, labels: list[str] | None) -> Task:
    try:
        definition = data["Definition"]
        instruction = definition[0] if isinstance(definition, list) else str(definition)
        demos = [Demo(str(e["input"]), str(e["output"])) for e in data.get("Positive Examples", [])]
        instances = []
        for n, inst in enumerate(data.get("Instances", [])):
            outs = inst["output"]
            outs = [outs] if isinstance(outs, str) else list(outs)
            instances.append(Instance(str(inst.get("id", f"{name}-{n}")), str(inst["input"]), tuple(map(str, outs))))
    except (KeyError, TypeError, IndexError) as exc:
        raise UserError(f"{name}: malformed Natural Instructions task ({exc!r})") from None
    first_refs = [i.outputs[0] for i in instances if i.outputs]
    ttype, labs = _infer_type_and_labels(first_refs, [d.output for d in demos], task_type, labels)
    return Task(name, instruction.strip(), demos, ttype, labs, instances)


def _load_own(data: dict, name: str, task_type: str | None, labels: list[str] | None) -> Task:
    try:
        instruction = str(data["instruction"]).strip()
        demos = [Demo(str(e["input"]), str(e["output"])) for e in data.get("examples") or []]
        instances = []
        for n, item in enumerate(data.get("eval") or []):
            if "outputs" in item:
                outs = tuple(str(o) for o in item["outputs"])
            else:
                outs = (str(item["output"]),)
            instances.append(Instance(str(item.get("id", f"{name}-{n}")), str(item["input"]), outs))
    except (KeyError, TypeError) as exc:
        raise UserError(f"{name}: malformed task file ({exc!r})") from None
    if not instruction:
        raise UserError(f"{name}: the task's instruction is empty")
    if not demos:
        raise UserError(f"{name}: a task needs at least one example under 'examples'")
    declared_type = task_type or data.get("type")
    declared_labels = labels or data.get("labels")
    first_refs = [i.outputs[0] for i in instances if i.outputs]
    ttype, labs = _infer_type_and_labels(first_refs, [d.output for d in demos], declared_type, declared_labels)
    return Task(str(data.get("name", name)), instruction, demos, ttype, labs, instances)


def load_task(path: str | Path, task_type: str | None = None, labels: list[str] | None = None) -> Task:
    """Load a task file of either format; `task_type` and `labels` override what is inferred."""
    path = Path(path)
    data = _read_structured(path)
    if not isinstance(data, dict):
        raise UserError(f"{path}: a task file must hold one object, not {type(data).__name__}")
    if "Definition" in data:
        task = _load_natural_instructions(data, path.stem, task_type, labels)
    elif "instruction" in data:
        task = _load_own(data, path.stem, task_type, labels)
    else:
        raise UserError(f"{path}: not a task file (expected a 'Definition' or an 'instruction' key)")
    if not task.demos:
        raise UserError(f"{path}: the task has no examples to learn from")
    return task


def load_seed_pool(path: str | Path) -> list[SeedTask]:
    """SPEC 1.2: JSON Lines, one seed task a line."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"seed file not found: {path}")
    seeds: list[SeedTask] = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            seeds.append(
                SeedTask(
                    id=str(row.get("id", f"seed_{lineno}")),
                    name=str(row.get("name", "")),
                    instruction=str(row["instruction"]).strip(),
                    instances=tuple(Demo(str(i.get("input", "")), str(i["output"])) for i in row.get("instances", [])),
                    is_classification=bool(row.get("is_classification", False)),
                )
            )
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise UserError(f"{path}:{lineno}: malformed seed task ({exc.__class__.__name__}: {exc})") from None
    if not seeds:
        raise UserError(f"{path}: the seed pool is empty")
    return seeds
