"""Tasks (Self-Guide) and seed pools (Self-Instruct), and their loaders (contract §1.1, 1.2).

A task file's format is detected by its content, never by its name: a JSON object with a
`Definition` key is a Natural Instructions V2 task; an object with an `instruction` key (YAML or
JSON) is one of our own task files.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Literal

import yaml

from .errors import UserError
from .metrics import normalize
from .store import jsonl_lines, read_text

TaskType = Literal["classification", "generation"]
MAX_LABELS = 10
DEFAULT_VALIDATION_SIZE = 100
DEFAULT_TEST_SIZE = 100
SPLITS = ("validation", "test")


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
    # An own task file may give its validation instances apart (`validation:`); otherwise the
    # held-out `instances` are split (see `split`).
    validation_instances: list[Instance] | None = None
    # Labelled training instances an own task file may give (`train:`): gold examples, never evaluated on
    # (checked at load). Without them, gold examples are drawn from the instances no split holds (`gold`).
    train_instances: list[Instance] | None = None

    @property
    def is_classification(self) -> bool:
        return self.type == "classification"

    def split(self, name: str, validation_size: int = DEFAULT_VALIDATION_SIZE,
              test_size: int = DEFAULT_TEST_SIZE, signal_size: int = 0) -> list[Instance]:
        """Held-out instances of one split, deterministic and disjoint.

        Instances repeating a demo input are skipped. Validation is the first `validation_size` of
        them and test the next `test_size`, skipping any whose input already is a validation input
        (or, when the file gives `validation:` apart, the first `test_size` of `instances` not in
        validation). Validation decides (promotion, settings); test is only reported. "signal" (the
        signal check's pool, `signal_size` at most) is validation followed by the instances after test
        that are in neither: more validation-side instances where the task has them, never a test one."""
        if name not in (*SPLITS, "signal"):
            raise UserError(f"unknown split {name!r}: validation or test")
        demo_inputs = {_norm(d.input) for d in self.demos}
        pool = [i for i in self.instances if _norm(i.input) not in demo_inputs]
        if self.validation_instances is not None:
            validation = [i for i in self.validation_instances if _norm(i.input) not in demo_inputs][:validation_size]
            rest = pool
        else:
            validation, rest = pool[:validation_size], pool[validation_size:]
        if name == "validation":
            return validation
        seen = {_norm(i.input) for i in validation}
        test, after = [], []
        for inst in rest:
            if _norm(inst.input) in seen:
                continue
            seen.add(_norm(inst.input))
            (test if len(test) < test_size else after).append(inst)
        if name == "test":
            return test
        return (validation + after)[:signal_size]

    def gold(self, per_label: int, seed: int, validation_size: int = DEFAULT_VALIDATION_SIZE,
             test_size: int = DEFAULT_TEST_SIZE, signal_size: int = 0) -> list[Instance]:
        """Up to `per_label` labelled examples of each label (generation: `per_label` in all), drawn with
        `seed`: from the file's `train:` where it has one, else from the instances that no held-out split
        (validation, test, the signal check's pool) holds and that repeat no demonstration. So gold examples,
        promotion validation, the signal pool and test are disjoint. A label that is evaluated but has no
        example to draw is an error; a label no instance has (only a demonstration shows it) is passed over."""
        if per_label <= 0:
            return []
        demo_inputs = {_norm(d.input) for d in self.demos}
        if self.train_instances is not None:
            pool = list(self.train_instances)
        else:
            held = {_norm(i.input) for name in (*SPLITS, "signal")
                    for i in self.split(name, validation_size, test_size, signal_size)}
            pool = [i for i in self.instances if _norm(i.input) not in held | demo_inputs]
        rng = random.Random(seed)
        if not self.is_classification:
            return rng.sample(pool, min(per_label, len(pool)))
        label_of = {normalize(lab): lab for lab in self.labels}
        by_label: dict[str, list[Instance]] = {lab: [] for lab in self.labels}
        for inst in pool:
            if (lab := label_of.get(normalize(inst.outputs[0]))) is not None:
                by_label[lab].append(inst)
        evaluated = {label_of.get(normalize(i.outputs[0])) for i in self.instances + (self.validation_instances or [])}
        if missing := [lab for lab, found in by_label.items() if not found and lab in evaluated]:
            where = "its train: list" if self.train_instances is not None else "the instances outside the evaluation splits"
            raise UserError(f"{self.name}: no gold example of the label(s) {', '.join(missing)} in {where}")
        return [inst for lab in self.labels for inst in rng.sample(by_label[lab], min(per_label, len(by_label[lab])))]


def _norm(text: str) -> str:
    return " ".join(text.split())


@dataclass(frozen=True)
class SeedTask:
    id: str
    name: str
    instruction: str
    instances: tuple[Demo, ...]
    is_classification: bool


class _TextLoader(yaml.SafeLoader):
    """YAML whose plain scalars stay the text the user wrote, `null` and `~` apart: YAML 1.1 reads `yes`,
    `no`, `on` and `off` as booleans and `007` as 7, so `labels: [yes, no]` would become True / False."""


def _unique_keys_mapping(loader: _TextLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    """A mapping whose keys are unique: YAML allows none twice, PyYAML would keep the last silently."""
    seen: dict[object, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if isinstance(key, str | int | float | type(None)) and key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} appears twice (first at line {seen[key] + 1})", key_node.start_mark)
        if isinstance(key, str | int | float | type(None)):
            seen[key] = key_node.start_mark.line
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_TextLoader.construct_mapping = _unique_keys_mapping  # type: ignore[method-assign]
_TextLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag == "tag:yaml.org,2002:null"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _read_structured(path: Path) -> object:
    """JSON when the text starts like JSON, YAML otherwise (every scalar kept as its text); a syntax error
    names its line."""
    text = read_text(path, "task file")
    if text.lstrip().startswith(("{", "[")):
        try:
            return json.loads(text, object_pairs_hook=partial(_unique_json_keys, path))
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}:{exc.lineno}:{exc.colno}: invalid JSON: {exc.msg}") from None
        except RecursionError:
            raise UserError(f"{path}: invalid JSON: nested too deeply") from None
    try:
        return yaml.load(text, Loader=_TextLoader)  # noqa: S506 (a SafeLoader with fewer implicit types)
    except RecursionError:
        raise UserError(f"{path}: invalid YAML: nested too deeply") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or exc.__class__.__name__
        raise UserError(f"{where}: invalid YAML: {problem}") from None


def _unique_json_keys(path: Path, pairs: list[tuple[str, object]]) -> dict:
    keys = [key for key, _ in pairs]
    twice = next((key for n, key in enumerate(keys) if key in keys[:n]), None)
    if twice is not None:
        raise UserError(f"{path}: invalid JSON: key {twice!r} appears twice in one object (the first would be "
                        "ignored)")
    return dict(pairs)


def _text(value: object, where: str, *, empty_ok: bool = False) -> str:
    """A field that must be text: numbers are their text; a list, a mapping, null or (unless `empty_ok`)
    blank text is refused, naming the entry (str() of a list would turn `[b, c]` into the label "['b', 'c']")."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        got = "nothing (null)" if value is None else f"a {type(value).__name__}"
        raise UserError(f"{where}: expected text, got {got}")
    text = str(value)
    if not empty_ok and not text.strip():
        raise UserError(f"{where} is empty")
    return text


def _examples(items: object, where: str) -> list[dict]:
    """A list of {input, output} mappings; the first bad one is named by its position."""
    if items is None:
        return []
    if not isinstance(items, list):
        raise UserError(f"{where}: expected a list of examples, got {type(items).__name__}")
    for n, item in enumerate(items):
        if not isinstance(item, dict):
            raise UserError(f"{where}[{n}]: expected an object with 'input' and 'output', got {type(item).__name__}")
        for key in ("input", "output"):
            if key not in item and not (key == "output" and "outputs" in item):
                raise UserError(f"{where}[{n}]: missing '{key}'")
    return items


def _infer_type_and_labels(
    first_refs: list[str], demo_outputs: list[str], task_type: str | None, labels: list[str] | None
) -> tuple[TaskType, list[str]]:
    """contract §1.1: classification when the first references take at most 10 distinct values.

    The label set is those values in first-seen order; a label that only the demos show (instances
    are often a filtered sample) is appended after them so the student may still produce it.
    """
    if task_type is not None and task_type not in ("classification", "generation"):
        raise UserError(f"--task-type must be 'classification' or 'generation', not {task_type!r}")
    if task_type == "generation" and labels:
        raise UserError("labels were given for a generation task: drop the labels or make it a classification task")
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


def _load_natural_instructions(data: dict, path: Path, task_type: str | None, labels: list[str] | None) -> Task:
    name = path.stem
    definition = data["Definition"]
    instruction = (definition[0] if isinstance(definition, list) and definition else definition) or ""
    if not isinstance(instruction, str) or not instruction.strip():
        raise UserError(f"{path}: 'Definition' holds no instruction text")
    demos = _demos(data.get("Positive Examples"), f"{path}: Positive Examples")
    instances = []
    for n, inst in enumerate(_examples(data.get("Instances"), f"{path}: Instances")):
        here = f"{path}: Instances[{n}]"
        outs = inst["output"] if isinstance(inst["output"], list) else [inst["output"]]
        if not outs:
            raise UserError(f"{here}: output: the list of accepted answers is empty")
        instances.append(Instance(_text(inst.get("id", f"{name}-{n}"), f"{here}: id"),
                                  _text(inst["input"], f"{here}: input", empty_ok=True),
                                  tuple(_text(o, f"{here}: output[{k}]") for k, o in enumerate(outs))))
    first_refs = [i.outputs[0] for i in instances if i.outputs]
    ttype, labs = _infer_type_and_labels(first_refs, [d.output for d in demos], task_type, labels)
    return Task(name, instruction.strip(), demos, ttype, labs, instances)


def _load_own(data: dict, path: Path, task_type: str | None, labels: list[str] | None) -> Task:
    name = path.stem
    instruction = data["instruction"]
    if not isinstance(instruction, str):
        raise UserError(f"{path}: 'instruction' must be the task's instruction text, not "
                        f"{'nothing (null)' if instruction is None else 'a ' + type(instruction).__name__}")
    if not instruction.strip():
        raise UserError(f"{path}: 'instruction' is empty (expected the task's instruction text)")
    demos = _demos(data.get("examples"), f"{path}: examples")
    if not demos:
        raise UserError(f"{path}: 'examples' is empty (a task needs at least one input/output example)")
    instances = _own_instances(data.get("eval"), f"{path}: eval", name)
    validation = _own_instances(data["validation"], f"{path}: validation", f"{name}-validation") \
        if data.get("validation") is not None else None
    declared_type = task_type or data.get("type")
    declared_labels = labels or data.get("labels")
    if declared_labels is not None and not (isinstance(declared_labels, list) and all(isinstance(x, str | int | float) for x in declared_labels)):
        raise UserError(f"{path}: 'labels' must be a list of strings")
    declared_labels = [str(x) for x in declared_labels] if declared_labels else None
    if declared_labels:
        _check_label_set(path, declared_labels)
    try:
        first_refs = [i.outputs[0] for i in (validation or []) + instances if i.outputs]
        ttype, labs = _infer_type_and_labels(first_refs, [d.output for d in demos], declared_type, declared_labels)
    except UserError as exc:
        raise UserError(f"{path}: {exc}") from None
    train = _own_instances(data["train"], f"{path}: train", f"{name}-train") if data.get("train") is not None else None
    _check_unique_ids(path, [("eval", instances), ("validation", validation or [])])
    if ttype == "classification" and declared_labels:
        _check_outputs_are_labels(path, labs, [("examples", [(d.output,) for d in demos]),
                                               ("eval", [i.outputs for i in instances]),
                                               ("validation", [i.outputs for i in validation or []]),
                                               ("train", [i.outputs for i in train or []])])
    if train:
        _check_train_apart(path, train, [("eval", instances), ("validation", validation or [])])
    return Task(str(data.get("name", name)), instruction.strip(), demos, ttype, labs, instances, validation, train)


def _check_unique_ids(path: Path, groups: list[tuple[str, list[Instance]]]) -> None:
    """Two held-out instances with one id would be scored as one: refused, naming both entries."""
    seen: dict[str, str] = {}
    for where, instances in groups:
        for n, inst in enumerate(instances):
            here = f"{where}[{n}]"
            if inst.id in seen:
                raise UserError(f"{path}: {here}: id {inst.id!r} is already used by {seen[inst.id]}; give every "
                                "evaluation instance its own id")
            seen[inst.id] = here


def _check_outputs_are_labels(path: Path, labels: list[str], groups: list[tuple[str, list[tuple[str, ...]]]]) -> None:
    """With `labels` declared, an answer outside them (a typo is enough) would teach or score a label the task
    does not have: refused, naming the entry."""
    known = {normalize(lab) for lab in labels}
    for where, outputs in groups:
        for n, outs in enumerate(outputs):
            if outs and normalize(outs[0]) not in known:
                raise UserError(f"{path}: {where}[{n}]: output {outs[0]!r} is not one of the labels "
                                f"{', '.join(labels)}; correct it or add it to 'labels'")


def _check_train_apart(path: Path, train: list[Instance], held: list[tuple[str, list[Instance]]]) -> None:
    """A gold training example whose input is also evaluated on would score what was taught: refused."""
    where = {_norm(inst.input): f"{name}[{n}]" for name, instances in held for n, inst in enumerate(instances)}
    for n, inst in enumerate(train):
        if _norm(inst.input) in where:
            raise UserError(f"{path}: train[{n}]: its input is also {where[_norm(inst.input)]}; a training example "
                            "must not be evaluated on (validation decides, test reports): remove it from one list")


def _check_label_set(path: Path, labels: list[str]) -> None:
    """Declared labels: at least two, none blank, none twice (as the metrics compare them, normalized)."""
    if any(not lab.strip() for lab in labels):
        raise UserError(f"{path}: 'labels' holds an empty label")
    normalized = [normalize(lab) for lab in labels]
    twice = next((lab for n, lab in enumerate(labels) if normalized[n] in normalized[:n]), None)
    if twice is not None:
        raise UserError(f"{path}: 'labels' lists {twice!r} twice (labels are compared without case and punctuation)")
    if len(labels) < 2:
        raise UserError(f"{path}: 'labels' needs at least two labels to classify between (got {labels[0]!r})")


def _demos(items: object, where: str) -> list[Demo]:
    return [Demo(_text(e["input"], f"{where}[{n}]: input", empty_ok=True), _text(e["output"], f"{where}[{n}]: output"))
            for n, e in enumerate(_examples(items, where))]


def _own_instances(items: object, where: str, prefix: str) -> list[Instance]:
    instances = []
    for n, item in enumerate(_examples(items, where)):
        here = f"{where}[{n}]"
        if "outputs" in item:
            if not isinstance(item["outputs"], list) or not item["outputs"]:
                raise UserError(f"{here}: 'outputs' must be a non-empty list of accepted answers")
            outs = tuple(_text(o, f"{here}: outputs[{k}]") for k, o in enumerate(item["outputs"]))
        else:
            outs = (_text(item["output"], f"{here}: output"),)
        instances.append(Instance(_text(item.get("id", f"{prefix}-{n}"), f"{here}: id"),
                                  _text(item["input"], f"{here}: input", empty_ok=True), outs))
    return instances


def load_task(path: str | Path, task_type: str | None = None, labels: list[str] | None = None) -> Task:
    """Load a task file of either format; `task_type` and `labels` override what is inferred."""
    path = Path(path)
    data = _read_structured(path)
    if data is None:
        raise UserError(f"{path}: the file is empty")
    if labels:
        _check_label_set(path, labels)
    if not isinstance(data, dict):
        raise UserError(f"{path}: a task file must hold one object, not {type(data).__name__}")
    if "Definition" in data:
        task = _load_natural_instructions(data, path, task_type, labels)
    elif "instruction" in data:
        task = _load_own(data, path, task_type, labels)
    else:
        keys = ", ".join(list(data)[:5]) or "none"
        raise UserError(f"{path}: unknown task format (expected a Natural Instructions 'Definition' key or our "
                        f"'instruction' key; found: {keys})")
    if not task.demos:
        raise UserError(f"{path}: the task has no examples to learn from")
    return task


def load_seed_pool(path: str | Path, bad_lines: str = "stop", warn=None) -> list[SeedTask]:
    """contract §1.2: JSON Lines, one seed task a line.

    A malformed line stops the load with its line number (`bad_lines="stop"`), or is reported
    through `warn` and skipped (`bad_lines="skip"`).
    """
    path = Path(path)
    text = read_text(path, "seed file")
    seeds: list[SeedTask] = []
    skipped: list[str] = []
    for lineno, line in jsonl_lines(text):
        try:
            seeds.append(_seed_task(json.loads(line), lineno))
        except json.JSONDecodeError as exc:
            problem = f"{path}:{lineno}: not valid JSON ({exc.msg} at column {exc.colno})"
        except RecursionError:
            problem = f"{path}:{lineno}: not valid JSON (nested too deeply)"
        except (ValueError, UserError) as exc:
            problem = f"{path}:{lineno}: {exc}"
        else:
            continue
        if bad_lines != "skip":
            raise UserError(f"{problem} (set selfinstruct.bad_seed_lines: skip to skip such lines)")
        skipped.append(problem)
        if warn:
            warn(f"warning: skipped {problem}")
    if not seeds:
        raise UserError(f"{path}: the seed pool is empty" + (f" ({len(skipped)} bad lines skipped)" if skipped else ""))
    return seeds


def _seed_task(row: object, lineno: int) -> SeedTask:
    if not isinstance(row, dict):
        raise ValueError(f"expected a JSON object, got {type(row).__name__}")
    instruction = row.get("instruction")
    if not isinstance(instruction, str) or not instruction.strip():
        raise ValueError("missing or empty 'instruction'")
    instances = row.get("instances", [])
    if not isinstance(instances, list) or not all(isinstance(i, dict) and "output" in i for i in instances):
        raise ValueError("'instances' must be a list of objects, each with an 'output'")
    is_classification = row.get("is_classification", False)
    if not isinstance(is_classification, bool):
        raise ValueError(f"'is_classification' must be true or false, not {is_classification!r}")
    return SeedTask(
        id=_text(row.get("id", f"seed_{lineno}"), "id"),
        name=_text(row.get("name", ""), "name", empty_ok=True),
        instruction=instruction.strip(),
        instances=tuple(Demo(_text(inst.get("input", ""), f"instances[{n}]: input", empty_ok=True),
                             _text(inst["output"], f"instances[{n}]: output")) for n, inst in enumerate(instances)),
        is_classification=is_classification,
    )
