"""Self-Instruct bootstrap (contract §3): the student writes new instructions, then instances for them.

Pure logic over a `Sampler`, like `selfguide.synthesize`: no files, no llama.cpp. Instruction requests
go out in waves, so a batched backend decodes many lists at once while the pool of generated
instructions (shown back in context, and the ROUGE-L reference) still grows during the run. Every
candidate, instruction or instance, ends as a training record or as a drop with its stage and reason,
and `stats` counts the funnel. At the end, `SelfInstruct` is the `Method` the loop runs.
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypedDict

from .. import progress
from ..config import SelfInstructConfig
from ..engine.sampler import Request, Sampler, SamplingParams, truncate_at_stop
from ..errors import UserError
from ..filters import FilterChain
from ..prompts import (
    PromptFormat,
    classification_check_prompt,
    input_first_prompt,
    instruct_training_prompt,
    instruction_generation_prompt,
    output_first_prompt,
)
from ..rouge import RougePool
from ..store import file_hash
from ..tasks import SeedTask, Task, load_seed_pool, load_task
from .base import Method, PromptFn, SynthResult, funnel_counts, register, stage_seed
from .selfinstruct_filters import INSTRUCTION_STAGES, conflicting_inputs, instance_check, instruction_filters


class SelfInstructStats(TypedDict):
    """`stats.json` of a Self-Instruct round: instructions from candidates to accepted, then instances."""

    method: str  # "self-instruct"
    seeds: int
    target: int
    stopped: str
    waves: int
    requests: int
    empty_completions: int
    candidates: int
    instruction_dropped: dict[str, int]  # per INSTRUCTION_STAGES, in order
    instructions_accepted: int
    classification: dict[str, int]  # yes / no / unclear
    instance_candidates: int
    instance_dropped: dict[str, int]  # per INSTANCE_STAGES
    instructions_with_instances: int
    instructions_without_instances: int
    train: int


LAST_LIST_ITEM = 16  # contract §3.1: the model continues the list up to item 16
INSTANCE_STAGES = (
    "truncated",
    "empty_output",
    "same_as_input",
    "cut_off",
    "conflict",
    "duplicate",
    "surplus",
)
CLASSIFICATION_CHOICES = ("Yes", "No")


# --- 1. instruction generation ------------------------------------------------------------------


def sample_context(
    seed_instructions: Sequence[str], generated: Sequence[str], cfg: SelfInstructConfig, rng: random.Random
) -> list[str]:
    """contract §3.1: up to `in_context_generated` generated instructions, seeds for the rest, shuffled.

    Seeds keep the list anchored to human-written tasks; the few generated ones push for novelty
    without letting the model's own quirks take over the context.
    """
    n_gen = min(cfg.in_context_generated, len(generated), cfg.in_context)
    shown = rng.sample(list(generated), n_gen)
    shown += rng.sample(list(seed_instructions), min(cfg.in_context - n_gen, len(seed_instructions)))
    rng.shuffle(shown)
    return shown


def instruction_stops(last_item: int = LAST_LIST_ITEM) -> tuple[str, ...]:
    # "\n17." rather than "17.": a bare "17." would also cut "in 2017." inside an instruction.
    return ("\n\n", f"\n{last_item + 1}.", f"\n{last_item + 1} .")


def parse_instruction_list(text: str, first_number: int, last_item: int = LAST_LIST_ITEM) -> list[str]:
    """Split a continued numbered list into its items, whitespace collapsed.

    Only the *next* number in sequence starts a new item, so a numbered sub-list inside an
    instruction ("Rank these:\\n1. ...") is not mistaken for the outer list. A completion that
    restates a number first (chat models often write "9. ..." or restart at "1. ") is followed from
    that number. The stop strings are applied here too, so a backend that overshoots them cannot
    smuggle in items past `last_item`.
    """
    text, _ = truncate_at_stop(text.lstrip(), instruction_stops(last_item))
    number = first_number
    if m := re.match(r"\s*(\d+)\s*\.(?!\d)\s*", text):
        number, text = int(m.group(1)), text[m.end() :]
    items: list[str] = []
    while True:
        m = re.search(rf"\n\s*{number + 1}\s*\.(?!\d)[ \t]*", text) if number < last_item else None
        if m is None:
            items.append(text)
            break
        items.append(text[: m.start()])
        text = text[m.end() :]
        number += 1
    return [" ".join(item.split()) for item in items]


# --- 2. classification or not --------------------------------------------------------------------


def classification_examples(
    seeds: Sequence[SeedTask], cfg: SelfInstructConfig, rng: random.Random
) -> list[tuple[str, bool]]:
    """contract §3.3: the few-shot examples, drawn once per run from the seed pool's own flags.

    One fixed draw per run keeps the prompt prefix identical across requests (cache-friendly) and the
    decision consistent between instructions.
    """
    yes = [s.instruction for s in seeds if s.is_classification]
    no = [s.instruction for s in seeds if not s.is_classification]
    shots = [(t, True) for t in rng.sample(yes, min(cfg.classify_shots_classification, len(yes)))]
    shots += [(t, False) for t in rng.sample(no, min(cfg.classify_shots_other, len(no)))]
    rng.shuffle(shots)
    return shots


def parse_yes_no(text: str) -> bool | None:
    word = text.strip().lower()
    if word.startswith("yes"):
        return True
    if word.startswith("no"):
        return False
    return None


# --- 3. instances ----------------------------------------------------------------------------------

_EXAMPLE_RX = re.compile(r"^\s*Example\s*\d+\s*[.:)]?\s*(.*)$", re.IGNORECASE)
_OUTPUT_RX = re.compile(r"^\s*Output\s*\d*\s*:\s?(.*)$", re.IGNORECASE)
_INPUT_RX = re.compile(r"^\s*Input\s*\d*\s*:\s?(.*)$", re.IGNORECASE)
_INLINE_OUTPUT_RX = re.compile(r"[ \t]+(?=Output\s*\d*\s*:)", re.IGNORECASE)
_CLASS_LABEL_RX = re.compile(r"(?:^|\n)[ \t]*Class label[ \t]*\d*[ \t]*:", re.IGNORECASE)


def parse_input_first(text: str) -> list[tuple[str, str]]:
    """(input, output) pairs from an input-first completion (contract §3.4).

    Accepts "Example N" blocks of "<input lines>\\nOutput: <output lines>", explicit "Input:" /
    "Output:" pairs with or without "Example" headers, and a bare "Output: ..." or plain text when
    the task needs no input (the whole text is then the output). An "Output:" written mid-line after
    the input is split off too. Field labels inside the input ("Paragraph: ...") are kept: they tell
    the trained model what the input is.
    """
    text = _INLINE_OUTPUT_RX.sub("\n", text.strip("\n"))
    pairs: list[tuple[str, str]] = []
    inp: list[str] = []
    out: list[str] | None = None  # None: still reading the input of the current example
    saw_output = False

    def finish() -> None:
        nonlocal inp, out
        if out is not None:
            pairs.append(("\n".join(inp).strip(), "\n".join(out).strip()))
        elif any(line.strip() for line in inp) and not saw_output:
            pairs.append(("", "\n".join(inp).strip()))  # no "Output:" at all: the text is the output
        inp, out = [], None

    for line in text.split("\n"):
        if m := _EXAMPLE_RX.match(line):
            finish()
            if m.group(1).strip():
                inp.append(m.group(1))
        elif m := _OUTPUT_RX.match(line):
            if out is not None:
                finish()
            out, saw_output = [m.group(1)], True
        elif m := _INPUT_RX.match(line):
            if out is not None:
                finish()
            inp.append(m.group(1))
        elif out is not None:
            out.append(line)
        else:
            inp.append(line)
    finish()
    return pairs


def parse_output_first(text: str) -> list[tuple[str, str]]:
    """(input, label) pairs from an output-first completion: "Class label: X\\n<Field>: <input>" blocks.

    The prompt ends with "Class label:", so a plain completion starts with the first label; a chat
    completion may repeat the marker itself. A block with no input line (the task needs no input)
    gives an empty input.
    """
    if not re.match(r"\s*Class label[ \t]*\d*[ \t]*:", text, re.IGNORECASE):
        text = "Class label:" + text
    pairs: list[tuple[str, str]] = []
    for block in _CLASS_LABEL_RX.split(text)[1:]:
        label, _, rest = block.strip("\n").partition("\n")
        pairs.append((rest.strip(), label.strip()))
    return pairs


def instance_stops(classification: bool, max_instances: int) -> tuple[str, ...]:
    if classification:
        return ("\nTask:", "\n\n")
    return ("\nTask:", f"\nExample {max_instances + 1}")


def filter_instances(
    pairs: Sequence[tuple[str, str]], limit: int
) -> tuple[list[tuple[str, str]], list[tuple[int, str, str]]]:
    """contract §3.5 over one instruction's parsed instances, in order: per-instance checks, then the
    same-input-different-output rule (drops them all), exact duplicates, then the per-instruction cap.

    Returns the kept pairs and, for each dropped pair, (its index, stage, reason).
    """
    dropped: list[tuple[int, str, str]] = []
    valid: list[int] = []
    for k, (inp, out) in enumerate(pairs):
        if why := instance_check(inp, out):
            dropped.append((k, *why))
        else:
            valid.append(k)
    conflicts = conflicting_inputs(pairs[k] for k in valid)
    if conflicts:
        reason = f"same input, different outputs: {conflicts[0][:60]!r}"
        dropped.extend((k, "conflict", reason) for k in valid)
        return [], sorted(dropped)
    kept: list[int] = []
    seen: set[tuple[str, str]] = set()
    for k in valid:
        key = (pairs[k][0].strip(), pairs[k][1].strip())
        if key in seen:
            dropped.append((k, "duplicate", "exact duplicate instance"))
        elif len(kept) >= limit:
            dropped.append((k, "surplus", f"more than {limit} instances"))
        else:
            seen.add(key)
            kept.append(k)
    return [(pairs[k][0].strip(), pairs[k][1].strip()) for k in kept], sorted(dropped)


# --- the bootstrap ---------------------------------------------------------------------------------


def bootstrap(
    seeds: list[SeedTask],
    sampler: Sampler,
    cfg: SelfInstructConfig,
    fmt: PromptFormat,
    seed: int,
    num_instructions: int | None = None,
    *,
    patience: int = 5,
) -> SynthResult:
    """Generate up to `num_instructions` (default `cfg.num_instructions`) new instructions, decide
    which are classification tasks, write instances, filter; `patience` consecutive waves that add no
    instruction stop the run early (a weak student can run dry), noted in `stats["stopped"]`."""
    if not seeds:
        raise ValueError("bootstrap needs a non-empty seed pool")
    target = num_instructions if num_instructions is not None else cfg.num_instructions
    result = SynthResult()
    written = write_instructions(seeds, sampler, cfg, fmt, seed, target, patience, result)
    accepted = written.accepted
    cls_counts = classify_instructions(seeds, sampler, cfg, fmt, seed, accepted)
    instances = write_instances(sampler, cfg, fmt, seed, accepted, result)
    result.stats = SelfInstructStats(**{
        "method": "self-instruct",
        "seeds": len(seeds),
        "target": target,
        "stopped": written.stopped,
        "waves": written.waves,
        "requests": written.requests,
        "empty_completions": written.empty_completions,
        "candidates": written.candidates,
        "instruction_dropped": funnel_counts(written.drops, INSTRUCTION_STAGES),
        "instructions_accepted": len(accepted),
        "classification": {k: cls_counts.get(k, 0) for k in ("yes", "no", "unclear")},
        "instance_candidates": instances.candidates,
        "instance_dropped": funnel_counts(instances.drops, INSTANCE_STAGES),
        "instructions_with_instances": instances.with_instances,
        "instructions_without_instances": len(accepted) - instances.with_instances,
        "train": len(result.train),
    })
    return result


@dataclass
class WrittenInstructions:
    accepted: list[dict[str, Any]]  # {id, instruction, request}
    drops: Counter[str] = field(default_factory=Counter)  # filter stage -> instructions it dropped
    requests: int = 0
    candidates: int = 0
    waves: int = 0
    empty_completions: int = 0
    stopped: str = "target reached"


def write_instructions(seeds: list[SeedTask], sampler: Sampler, cfg: SelfInstructConfig, fmt: PromptFormat, seed: int,
                       target: int, patience: int, result: SynthResult) -> WrittenInstructions:
    """Steps 1-2: instruction generation in waves; each candidate filtered in order as it arrives
    (drops recorded in `result.dropped`)."""
    rng = random.Random(seed)
    seed_instructions = [s.instruction for s in seeds]
    pool = RougePool(seed_instructions, threshold=cfg.rouge_threshold)
    ifilters = instruction_filters()
    gen_params = SamplingParams(
        temperature=cfg.temperature,
        top_k=0,  # nucleus sampling alone, as Self-Instruct does
        top_p=cfg.top_p,
        presence_penalty=cfg.presence_penalty,
        max_tokens=cfg.max_tokens,
        stop=instruction_stops(),
    )
    out = WrittenInstructions(accepted=[])
    stalled = 0
    with progress.bar("writing instructions", target, "instructions") as bar:
        while len(out.accepted) < target:
            remaining = target - len(out.accepted)
            per_request = max(0.5, len(out.accepted) / out.requests) if out.requests else 1.0
            size = min(cfg.wave_size, max(1, math.ceil(remaining / per_request)))
            requests, shown_lists = [], []
            for r in range(out.requests, out.requests + size):
                shown = sample_context(seed_instructions, [a["instruction"] for a in out.accepted], cfg, rng)
                prompt = fmt.render(instruction_generation_prompt(shown))
                requests.append(Request(prompt, replace(gen_params, seed=stage_seed(seed, 1, r))))
                shown_lists.append(shown)
            wave = _parse_wave(range(out.requests, out.requests + size), shown_lists, sampler.generate(requests),
                               ifilters, out)
            out.waves += 1
            out.requests += size
            _drop_near_duplicates(wave, pool, cfg.rouge_threshold)
            before = len(out.accepted)
            _admit(wave, pool, target, out, result)
            bar.advance(len(out.accepted) - before)
            stalled = stalled + 1 if len(out.accepted) == before else 0
            if stalled >= patience and len(out.accepted) < target:
                out.stopped = f"stalled ({patience} waves without a new instruction)"
                break
    progress.summary(f"instructions: {len(out.accepted)} accepted from {out.candidates} candidates in {out.waves} waves "
                     f"({out.stopped}) in {bar.seconds:.0f}s")
    return out


def _parse_wave(request_ids: range, shown_lists: list[list[str]], completions, ifilters: FilterChain,
                out: WrittenInstructions) -> list[dict[str, Any]]:
    """Every completion of a wave parsed into candidates, in request order; a candidate the
    instruction filters refuse carries its `drop` (stage, reason)."""
    wave: list[dict[str, Any]] = []
    for r, shown, outs in zip(request_ids, shown_lists, completions, strict=True):
        comp = outs[0]
        items = parse_instruction_list(comp.text, len(shown) + 1)
        # Out of tokens: the last item may stop mid-sentence. Empty items ("10." then nothing)
        # are list debris, not candidates.
        cut = items.pop() if comp.finish_reason == "length" and items else ""
        parsed = [(it, None) for it in items if it]
        if cut:
            parsed.append((cut, ("truncated", "last item cut off at max_tokens")))
        if not parsed:
            out.empty_completions += 1
        for item, drop in parsed:
            cand = {"id": f"i{out.candidates:05d}", "instruction": item, "request": r}
            out.candidates += 1
            why = drop or ifilters.check(item)
            if why is not None:
                cand["drop"] = why
            wave.append(cand)
    return wave


def _drop_near_duplicates(wave: list[dict[str, Any]], pool: RougePool, threshold: float) -> None:
    """ROUGE-L against the pool, each candidate also against the ones kept before it this wave."""
    checked = [c for c in wave if "drop" not in c]
    for cand, near in zip(checked, pool.filter_batch([c["instruction"] for c in checked], add=False), strict=True):
        if near is not None:
            cand["drop"] = ("rouge", f"ROUGE-L {near.score:.3f} > {threshold}")
            cand["nearest"] = near.text


def _admit(wave: list[dict[str, Any]], pool: RougePool, target: int, out: WrittenInstructions,
           result: SynthResult) -> None:
    """Accept the wave's surviving candidates until the target is reached; record every drop."""
    for cand in wave:
        if len(out.accepted) >= target:
            cand["drop"] = ("surplus", "target reached")
        stage_reason = cand.pop("drop", None)
        if stage_reason is not None:
            stage, reason = stage_reason
            out.drops[stage] += 1
            result.dropped.append({"kind": "instruction", "stage": stage, "reason": reason} | cand)
            continue
        pool.add(cand["instruction"])
        out.accepted.append(cand)


def classify_instructions(seeds: list[SeedTask], sampler: Sampler, cfg: SelfInstructConfig, fmt: PromptFormat,
                          seed: int, accepted: list[dict[str, Any]]) -> Counter[str]:
    """Step 3, classification or not: one greedy, Yes/No-constrained request per instruction; sets each
    candidate's `is_classification` and counts yes / no / unclear."""
    # Its own generator: the shots must not depend on how many waves the instruction loop took.
    shots = classification_examples(seeds, cfg, random.Random(stage_seed(seed, 2, -1)))
    cls_params = SamplingParams(temperature=0.0, max_tokens=4, stop=("\n",), choices=CLASSIFICATION_CHOICES)
    requests = [
        Request(
            fmt.render(classification_check_prompt(shots, a["instruction"])),
            replace(cls_params, seed=stage_seed(seed, 2, n)),
        )
        for n, a in enumerate(accepted)
    ]
    cls_counts: Counter[str] = Counter()
    with progress.bar("classifying instructions", len(requests), "instructions", samples=True):
        outputs = sampler.generate(requests) if requests else []
    for cand, outs in zip(accepted, outputs, strict=True):
        answer = parse_yes_no(outs[0].text)
        cand["is_classification"] = bool(answer)
        cls_counts["yes" if answer else "no" if answer is False else "unclear"] += 1
    return cls_counts


@dataclass
class WrittenInstances:
    candidates: int = 0
    drops: Counter[str] = field(default_factory=Counter)  # filter stage -> instances it dropped
    with_instances: int = 0  # instructions left with at least one instance


def write_instances(sampler: Sampler, cfg: SelfInstructConfig, fmt: PromptFormat, seed: int,
                    accepted: list[dict[str, Any]], result: SynthResult) -> WrittenInstances:
    """Steps 4-5: instances (output-first for classification, input-first otherwise), then the instance
    filters; survivors become `result.train`, drops go to `result.dropped`."""
    limit = cfg.instances_per_instruction
    inst_params = SamplingParams(temperature=cfg.instance_temperature, max_tokens=cfg.instance_max_tokens)
    requests = []
    for n, cand in enumerate(accepted):
        cls = cand["is_classification"]
        text = output_first_prompt(cand["instruction"]) if cls else input_first_prompt(cand["instruction"])
        params = replace(inst_params, stop=instance_stops(cls, limit), seed=stage_seed(seed, 3, n))
        requests.append(Request(fmt.render(text), params))
    out = WrittenInstances()
    with progress.bar("writing instances", len(requests), "instructions", samples=True):
        outputs = sampler.generate(requests) if requests else []
    for cand, outs in zip(accepted, outputs, strict=True):
        _keep_instances(cand, outs[0], limit, out, result)
    return out


def _keep_instances(cand: dict[str, Any], comp, limit: int, out: WrittenInstances, result: SynthResult) -> None:
    """One instruction's completion parsed into instances and filtered."""
    cls = cand["is_classification"]
    pairs = parse_output_first(comp.text) if cls else parse_input_first(comp.text)
    out.candidates += len(pairs)
    truncated = comp.finish_reason == "length" and bool(pairs)
    usable = pairs[:-1] if truncated else pairs
    kept, dropped = filter_instances(usable, limit)
    if truncated:
        dropped.append((len(pairs) - 1, "truncated", "last instance cut off at max_tokens"))
    base = {"instruction_id": cand["id"], "instruction": cand["instruction"], "is_classification": cls}
    for k, stage, reason in dropped:
        out.drops[stage] += 1
        inp, output = pairs[k]
        result.dropped.append(
            {"kind": "instance", "id": f"{cand['id']}-c{k}", "stage": stage, "reason": reason}
            | base
            | {"input": inp, "output": output}
        )
    if not kept:
        # Visible in dropped.jsonl too, though it is not an instruction-filter drop.
        result.dropped.append(
            {"kind": "instruction", "id": cand["id"], "stage": "no_instances", "reason": "no instance survived"}
            | base
            | {"request": cand["request"]}
        )
        return
    out.with_instances += 1
    for k, (inp, output) in enumerate(kept):
        result.train.append(
            {"id": f"{cand['id']}-{k}", "instruction": cand["instruction"], "input": inp, "output": output}
            | {"is_classification": cls}
        )


def selfinstruct_training_rows(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Records -> {"id", "prompt", "completion"} rows with the fixed instruction/input/response template.

    The prompt is the template's user text and the completion the bare output; training renders
    both (`train.render_rows`), like every other prompt, through `PromptFormat`.
    """
    return [
        {
            "id": rec.get("id"),
            "prompt": instruct_training_prompt(rec["instruction"], rec.get("input", "")),
            "completion": str(rec["output"]).strip(),
        }
        for rec in records
    ]


def zero_shot_prompt(task: Task, input_text: str) -> str:
    """Evaluation prompt for a Self-Instruct student: the fixed template it was trained on, no demos.

    Training and evaluation must agree on the format, so this is the training template itself.
    """
    return instruct_training_prompt(task.instruction, input_text)


@register
class SelfInstruct(Method):
    name = "self-instruct"
    own_flags = ("--seed-tasks", "--eval-tasks", "--num-instructions")
    _seeds: list[SeedTask] | None = None

    def check_inputs(self) -> None:
        if not self.cfg.seed_tasks:
            raise UserError("self-instruct needs --seed-tasks")
        if not self.eval_task_files():
            raise UserError("self-instruct needs --eval-tasks (Natural Instructions task files to evaluate on)")
        self.seed_pool()  # a bad seed file fails here

    def seed_pool(self) -> list[SeedTask]:
        """The seed tasks, read once (bad lines are reported then, per `selfinstruct.bad_seed_lines`)."""
        if self._seeds is None:
            self._seeds = load_seed_pool(self.cfg.seed_tasks, self.cfg.selfinstruct.bad_seed_lines, warn=print)
        return self._seeds

    def input_files(self) -> list[str]:
        return [*self.eval_task_files(), *([self.cfg.seed_tasks] if self.cfg.seed_tasks else [])]

    def eval_task_files(self) -> list[str]:
        return list(self.cfg.eval_tasks or ([self.cfg.task] if self.cfg.task else []))

    def load_tasks(self) -> list[Task]:
        return [load_task(p) for p in self.eval_task_files()]  # as written: no label/type overrides

    def default_run_name(self) -> str:
        return "self-instruct"

    def settings(self) -> dict[str, Any]:
        return {**self.cfg.selfinstruct.model_dump(), "seeds": file_hash(self.cfg.seed_tasks) if self.cfg.seed_tasks else ""}

    def synthesize(self, sampler: Sampler, seed: int) -> SynthResult:
        return bootstrap(self.seed_pool(), sampler, self.cfg.selfinstruct, PromptFormat.from_info(sampler.info), seed=seed)

    def extra_outputs(self, result: SynthResult) -> dict[str, list[dict[str, Any]]]:
        return {"instances.jsonl": result.train}

    def training_rows(self, result: SynthResult) -> list[dict[str, Any]]:

        return selfinstruct_training_rows(result.train)

    def uses_chat_template(self) -> bool:
        """`selfinstruct.template: fixed` trains and evaluates with the plain instruction template even
        when the student has a chat template."""
        return self.cfg.selfinstruct.template == "auto"

    def eval_prompt(self) -> tuple[PromptFn, tuple[str, ...]]:

        return zero_shot_prompt, ("\n###",)

    @staticmethod
    def funnel_steps(stats: dict[str, Any]) -> list[tuple[str, int]]:
        steps = [("instruction candidates", stats.get("candidates", 0))]
        left = stats.get("candidates", 0)
        for stage, n in (stats.get("instruction_dropped") or {}).items():
            left -= n
            steps.append((f"- {stage}", left))
        steps += [("with instances", stats.get("instructions_with_instances", 0)), ("training rows", stats.get("train", 0))]
        return steps
