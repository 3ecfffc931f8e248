"""One configuration model: defaults (docs/contract.md), then a YAML file, then command-line flags.

Every stage reads its own section; the loop writes the resolved whole to `config.yaml` in the run
directory so a run can be read back and repeated.
"""

from __future__ import annotations

import difflib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from .builtin_students import BUILTIN_STUDENTS
from .errors import UserError
from .filters import DEFAULT_NOISE_PATTERNS


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)  # `num_inputs: true` is not 1, `"5"` not 5


def _f(default: Any, help: str, **kw: Any) -> Any:
    """A setting with its default and the one-line explanation `config --print` shows."""
    if callable(default):
        return Field(default_factory=default, description=help, **kw)
    return Field(default, description=help, **kw)


class EngineConfig(_Section):
    """How the student is served for sampling."""

    backend: Literal["batched", "sequential"] = _f("batched", "batched: many sequences per llama_decode; sequential: create_completion")
    n_ctx: int = _f(4096, "context length (tokens) per sequence", ge=64)
    n_threads: int | None = _f(None, "CPU threads for llama.cpp (null: all cores)")
    n_parallel: int = _f(64, "sequences the batched engine decodes together (fewer where the KV budget says)", ge=1)
    endpoints: list[str] = _f(list, "OpenAI-compatible /v1/completions servers to sample from instead (--endpoint)")
    timeout_s: float = _f(120.0, "endpoints: seconds before a request is retried elsewhere", gt=0)
    retries: int = _f(4, "endpoints: attempts per request before giving up", ge=0)


SmallStudentChange = Literal["input_lead", "wave_context", "strip_input_echo", "field_filter", "answer_checks",
                             "repeat_limit", "balance_floor"]


class SelfGuideConfig(_Section):
    """Self-Guide synthesis (contract §2)."""

    preset: Literal["small-student", "original"] = _f(
        "small-student", "small-student: the method with this project's changes for small chat students (see "
                         "`without`); original: the method as first published, every such change off")
    without: list[SmallStudentChange] = _f(
        list, "changes of the small-student preset to switch off one by one (ablations): input_lead (start a "
              "written input with the demonstrations' first field), wave_context (one draw of accepted inputs per "
              "wave, shared as a prefix), strip_input_echo (remove an echoed 'Input:' instead of dropping the input), "
              "field_filter (drop inputs missing or repeating a demonstration field), answer_checks (generation: "
              "strip a lead-in, drop copies of a demonstration's answer and run-ons), repeat_limit "
              "(answer_repeat_limit), balance_floor (balance_floor)")
    num_inputs: int = _f(400, "input candidates drawn per round (0: none; a round then trains on gold_per_label's "
                              "examples alone)", ge=0)
    gold_per_label: int = _f(0, "gold examples per label added to every round's training rows (0: none): the task's "
                                "train: list, or instances outside validation, test and the signal pool", ge=0)
    context_inputs: int = _f(10, "accepted inputs shown back to the model when it writes new ones", ge=0)
    wave_size: int = _f(32, "input requests issued together before filtering", ge=1)
    input_temperature_classification: float = _f(0.7, "temperature for writing inputs, classification tasks", ge=0)
    input_temperature_generation: float = _f(0.9, "temperature for writing inputs, generation tasks", ge=0)
    input_top_k: int = _f(40, "top-k for writing inputs", ge=0)
    num_samples: int = _f(10, "annotation samples per input (the self-consistency vote)", ge=1)
    annotate_temperature: float = _f(0.2, "temperature of the annotation samples", ge=0)
    annotate_top_k: int = _f(10, "top-k of the annotation samples", ge=0)
    vote_threshold: float = _f(0.3, "an answer needs this share of the samples to be kept", ge=0, le=1)
    length_filter: bool | None = _f(None, "drop inputs far longer/shorter than the examples (null: on for classification)")
    output_length_filter: bool = _f(True, "generation: drop outputs far from the examples' length")
    answer_repeat_limit: int = _f(
        3, "generation: an answer the vote gives to more than this many different inputs does not depend on its "
           "input (a small student's system prompt, 'No, no, no!') and is dropped from all of them; 0: off "
           "(the preset's repeat_limit)", ge=0)
    noise_patterns: list[str] = _f(lambda: list(DEFAULT_NOISE_PATTERNS), "regexes marking a generated input as noise")
    input_filters: bool = _f(True, "drop noisy, duplicate and (classification) odd-length inputs; false: keep all")
    labels_in_vote: Literal["constrained", "exact", "any"] = _f(
        "constrained", "classification: constrained: annotation decodes only label strings (grammar); exact: free "
                       "decoding, only samples that are exactly a label count in the vote; any: every sample counts")
    # checked where the labeller is looked up (methods/labellers.py), so the configuration imports no method
    labeler: str = _f(
        "auto", "classification: who labels a written input. auto: before each round the signal check labels "
                "validation inputs with every labeller and the one whose labels agree with the gold labels above "
                "chance (and best) labels the round; no such labeller: the round is not trained. Or a name: vote "
                "(the self-consistency vote of the published method; num_samples, annotate_*, vote_threshold and "
                "labels_in_vote apply), batch-calibrated (each label's log-probability with the student's label "
                "prior over the round's inputs divided out, Zhou et al. 2024), content-free-calibrated (the prior "
                "from content-free inputs, Zhao et al. 2021), argmax (the uncalibrated best guess), gold-fitted (the "
                "prior fitted on the gold examples of gold_per_label; a candidate under auto only where they are "
                "set); a named labeller trains even where the check finds no signal")
    signal_size: int = _f(
        300, "classification: validation instances the signal check labels (the promotion validation first, then "
             "instances that are neither validation nor test, as many as the task has)", ge=1)
    signal_level: float = _f(
        0.05, "the signal check's test level: a labeller passes when a permutation test of its balanced accuracy "
              "against chance (corrected for choosing among the labellers) gives p at most this, and it is at least "
              "chance + 5 with two or more labels", gt=0, le=1)
    signal_generation_size: int = _f(
        16, "generation: validation inputs on which the check compares the vote's answers with the gold answers "
            "(informs, never refuses)", ge=0)
    label_margin: float = _f(
        0.0, "calibrated labellers: the best label's calibrated log-score must beat the runner-up's by this much "
             "(and by more than nothing)", ge=0)
    balance: bool = _f(True, "classification: trim every label to the rarest label's count")
    balance_floor: int = _f(
        32, "balance never trims a label below this many rows (the preset's balance_floor; 0: down to the rarest "
            "label, which leaves 2 rows when the vote gives one label 63 times and the other once)", ge=0)
    max_tokens_factor: float = _f(2.0, "max new tokens = this x the longest example (in tokens)", gt=0)

    @model_validator(mode="after")
    def _something_to_train_on(self) -> SelfGuideConfig:
        if self.num_inputs == 0 and self.gold_per_label == 0:
            raise ValueError("num_inputs 0 leaves a round nothing to train on: give input candidates, or "
                             "gold_per_label (gold examples)")
        return self

    def key_dump(self) -> dict[str, Any]:
        """The section as a stage cache key reads it: a setting added later enters only where it acts
        (gold_per_label > 0), so stages finished before it existed keep their keys."""
        return self.model_dump(exclude=set() if self.gold_per_label else {"gold_per_label"})

    def uses(self, change: str) -> bool:
        """Whether one of the small-student changes is on: the preset asks for it and `without` leaves it."""
        return self.preset == "small-student" and change not in self.without

    @property
    def repeat_limit(self) -> int:
        """The answer_repeat_limit in force (0: off)."""
        return self.answer_repeat_limit if self.uses("repeat_limit") else 0

    @property
    def floor(self) -> int:
        """The balance_floor in force (0: the rarest label's count)."""
        return self.balance_floor if self.uses("balance_floor") else 0


class SelfInstructConfig(_Section):
    """Self-Instruct bootstrap (contract §3)."""

    num_instructions: int = _f(200, "new instructions to accept per round", ge=1)
    in_context: int = _f(8, "instructions shown per generation prompt", ge=1)
    in_context_generated: int = _f(2, "of those, how many come from the generated pool", ge=0)
    temperature: float = _f(0.7, "temperature for writing instructions", ge=0)
    top_p: float = _f(0.5, "top-p for writing instructions", gt=0, le=1)
    presence_penalty: float = _f(2.0, "presence penalty for writing instructions")
    max_tokens: int = _f(512, "max new tokens per instruction-generation request", ge=1)
    rouge_threshold: float = _f(0.7, "drop an instruction whose ROUGE-L to the pool reaches this", gt=0, le=1)
    classify_shots_classification: int = _f(12, "classification examples in the is-it-classification prompt", ge=0)
    classify_shots_other: int = _f(19, "non-classification examples in that prompt", ge=0)
    instances_per_instruction: int = _f(5, "instances written per accepted instruction", ge=1)
    instance_temperature: float = _f(0.0, "temperature for writing instances", ge=0)
    instance_max_tokens: int = _f(300, "max new tokens per instance request", ge=1)
    wave_size: int = _f(16, "instruction requests issued together", ge=1)
    template: Literal["auto", "fixed"] = _f("auto", "auto: the model's chat template when it has one; fixed: plain text")
    bad_seed_lines: Literal["stop", "skip"] = _f("stop", "a malformed seed-file line: stop with its line number, or skip it")


class TrainConfig(_Section):
    """LoRA / QLoRA finetuning (contract §4)."""

    backend: Literal["auto", "unsloth", "hf"] = _f("auto", "auto: Unsloth on a CUDA GPU when installed, else transformers+peft+trl")
    quantization: Literal["auto", "nf4", "none"] = _f(
        "auto", "auto: nf4 with a CUDA GPU, none without (bitsandbytes' CPU 4-bit path is slow and memory is not "
                "short there); nf4: QLoRA (4-bit base); none: 16-bit LoRA")
    lora_r: int = _f(16, "LoRA rank", ge=1)
    lora_alpha: int = _f(16, "LoRA alpha", ge=1)
    lora_dropout: float = _f(0.0, "LoRA dropout", ge=0, lt=1)
    target_modules: str | list[str] = _f("all-linear", "modules that get adapters")
    learning_rate: float = _f(2e-4, "peak learning rate", gt=0)
    epochs: float = _f(3.0, "passes over the training rows", gt=0)
    lr_scheduler: str = _f("cosine", "transformers learning-rate schedule name")
    warmup_ratio: float = _f(0.03, "share of steps spent warming up", ge=0, lt=1)
    batch_size: int = _f(4, "micro-batch (rows per device step)", ge=1)
    grad_accum: int = _f(1, "gradient accumulation steps", ge=1)
    max_seq_length: int = _f(1024, "longer rows are truncated", ge=16)
    seed: int = _f(0, "training seed")
    gradient_checkpointing: bool | None = _f(
        None, "recompute activations in the backward pass to save memory (null: on with a GPU, off on a CPU, where "
              "memory is plentiful and compute is not; trl's own default is on)")
    precision: Literal["auto", "float32", "bfloat16"] = _f(
        "auto", "compute precision of training. auto: bfloat16 where the hardware computes it natively (a GPU that "
                "supports it; a CPU with AVX512_BF16 or AMX-BF16), float32 elsewhere, where emulated bfloat16 is slower "
                "than float32. bfloat16 on a CPU is autocast over float32 weights and optimizer state")
    shared_prefix: Literal["auto", "off"] = _f(
        "auto", "auto: run the prompt a micro-batch's rows share once (same loss and gradients, faster); off: per row")
    divergence_factor: float = _f(10.0, "stop when the loss exceeds this times its first value", gt=1)
    oom_retries: int = _f(3, "GPU out-of-memory: halve the micro-batch this many times", ge=0)


class ExportConfig(_Section):
    """Merge, convert, quantize (contract §4)."""

    quant: Literal["auto", "q4_k_m", "q8_0", "f16", "f32"] = _f(
        "auto", "quantization of each round's GGUF (auto: q8_0 below 1B parameters, where 4 bits changed 22% of a "
                "135M student's greedy answer tokens, q4_k_m above)")
    keep_f16_gguf: bool = _f(False, "keep the intermediate f16 GGUF beside the quantized one")
    keep: Literal["all", "resume", "promoted"] = _f(
        "resume", "what each finished round keeps: all; resume: everything but the 16-bit merged weights no resume or "
                  "later round needs (the current student's stay); promoted: also drop the GGUFs of rounds not promoted")
    gate: bool = _f(True, "check every exported GGUF against the merged model before it can become the student")
    gate_prompts: int = _f(10, "validation prompts whose answers the gate compares (quantized vs 16-bit)", ge=1)
    gate_answer_tokens: int = _f(16, "answer tokens per gate prompt", ge=1)
    gate_min_agreement: float = _f(0.85, "share of answer tokens where the quantized file must choose as the 16-bit "
                                         "model does (or a tie, see gate_tie_margin)", ge=0, le=1)
    gate_tie_margin: float = _f(0.69, "a different choice of the quantized file counts as a tie when the 16-bit model "
                                      "prefers its own token by at most this many nats (ln 2: twice as likely)", ge=0)
    gate_min_top1: float = _f(0.9, "f16 conversion vs merged model: least top-1 agreement of the logits (a near tie, "
                                   "see gate_tie_margin, agrees)", ge=0, le=1)
    gate_max_logit_diff: float = _f(0.05, "f16 conversion vs merged model: largest logit difference, as a share of the "
                                          "logit range", gt=0)


class EvalConfig(_Section):
    """Evaluation (contract §5)."""

    validation_size: int = _f(100, "validation instances per task (they decide promotion and settings)", ge=1)
    test_size: int = _f(100, "test instances per task, disjoint from validation (only reported)", ge=0)
    constrain_labels: bool = _f(False, "decode only label strings (off: measure what the model writes)")
    max_tokens: int | None = _f(None, "max new tokens (null: 2x the longest demonstration or validation answer, in "
                                      "tokens; never the test references)")


class LoopConfig(_Section):
    """The rounds (contract §4)."""

    rounds: int = _f(2, "rounds after round 0", ge=0)
    # checked where the method is looked up (methods.method_class), so the configuration imports no method
    method: str = _f("self-guide", "self-guide (one task) or self-instruct (general): a name in selfguide_lite/methods")
    train_from: Literal["base", "previous"] = _f("base", "base: a fresh adapter on the original weights; previous: on the last student")
    data: Literal["latest", "accumulate"] = _f("latest", "latest: this round's rows; accumulate: every round's so far")
    min_train_rows: int = _f(16, "a round with fewer training rows is not trained (no_data)", ge=1)
    min_train_labels: int = _f(
        2, "classification: a round whose training rows carry fewer labels is not trained (no_data): one label can "
           "only teach a constant answer", ge=1)
    promote_tolerance: float = _f(1.0, "a round this many validation points below the best is kept but not promoted", ge=0)


class Config(_Section):
    """Everything a run reads. Precedence: defaults < preset (demo) < --config file < flags."""

    task: str | None = _f(None, "Self-Guide task file (Natural Instructions JSON or our YAML/JSON)")
    model: str | None = _f(None, f"student: a built-in name ({', '.join(BUILTIN_STUDENTS)}), a GGUF file, "
                                 "ollama:NAME or ollama:NAME:TAG, lmstudio:PUBLISHER/NAME or lmstudio:PUBLISHER/NAME/FILE, "
                                 "a local HF checkpoint directory, "
                                 "or a hub id")
    seed_tasks: str | None = _f(None, "Self-Instruct seed tasks (JSON Lines: instruction, instances)")
    eval_tasks: list[str] = _f(list, "Self-Instruct: task files to evaluate on")
    task_type: Literal["classification", "generation"] | None = _f(
        None, "override the inferred task type: classification or generation")
    labels: list[str] | None = _f(None, "override the inferred label set (on the command line: comma-separated)")
    run_dir: str | None = _f(None, "run directory (null: runs/<task name>)")
    seed: int = _f(0, "run seed (round k samples with seed + k)")
    engine: EngineConfig = _f(EngineConfig, "sampling engine")
    selfguide: SelfGuideConfig = _f(SelfGuideConfig, "Self-Guide synthesis")
    selfinstruct: SelfInstructConfig = _f(SelfInstructConfig, "Self-Instruct bootstrap")
    train: TrainConfig = _f(TrainConfig, "finetuning")
    export: ExportConfig = _f(ExportConfig, "merge, convert, quantize")
    eval: EvalConfig = _f(EvalConfig, "evaluation")
    loop: LoopConfig = _f(LoopConfig, "rounds")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def annotated_yaml(cfg: Config | None = None) -> str:
    """The configuration as YAML with each setting's explanation as a comment (`config --print`)."""
    cfg = cfg or Config()
    lines = ["# selfguide_lite configuration: every setting with its default. Pass a file like this with --config;",
             "# command-line flags override it."]

    def emit(model: BaseModel, indent: str) -> None:
        for name, info in type(model).model_fields.items():
            value = getattr(model, name)
            if isinstance(value, BaseModel):
                lines.append(f"{indent}{name}:{'':<{max(1, 41 - len(indent) - len(name))}}# {info.description}")
                emit(value, indent + "  ")
                continue
            text = yaml.safe_dump({name: value}, default_flow_style=True, width=10**6).strip()[1:-1]
            lines.append(f"{indent}{text}{'':<{max(1, 42 - len(indent) - len(text))}}# {info.description}")

    emit(cfg, "")
    return "\n".join(lines) + "\n"


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` laid on `base`: nested sections merge key by key, anything else replaces (new dicts; the
    precedence rule of configuration files and flags, and of the scripts' variants)."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


# Old on/off switches that are now small-student changes of the same name (false: listed in `without`).
_OLD_SWITCHES = ("input_lead", "field_filter", "answer_checks", "strip_input_echo")


def migrate_old_keys(data: dict[str, Any], where: str, warn: Callable[[str], None]) -> dict[str, Any]:
    """A configuration written with the keys before the Self-Guide preset (and before `seeds` became
    `seed_tasks`), rewritten with today's keys; one warning line names what was rewritten."""
    renamed: list[str] = []
    data = dict(data)
    if "seeds" in data:
        data["seed_tasks"] = data.pop("seeds")
        renamed.append("seeds -> seed_tasks")
    section = data.get("selfguide")
    if isinstance(section, dict):
        section = dict(section)
        without = list(section.get("without") or [])
        for old in _OLD_SWITCHES:
            if old in section:
                renamed.append(f"selfguide.{old}")
                if not _old_bool(section.pop(old), f"{where}: selfguide.{old}") and old not in without:
                    without.append(old)
        if "context_sampling" in section:
            renamed.append("selfguide.context_sampling")
            mode = section.pop("context_sampling")
            if mode not in ("wave", "request"):
                raise UserError(f"{where}: selfguide.context_sampling (an old setting name): expected wave or request, "
                                f"got {mode!r}")
            if mode == "request" and "wave_context" not in without:
                without.append("wave_context")
        if "constrain_labels" in section or "label_filter" in section:
            renamed.append("selfguide.constrain_labels/label_filter")
            constrain = _old_bool(section.pop("constrain_labels", True), f"{where}: selfguide.constrain_labels")
            exact = _old_bool(section.pop("label_filter", True), f"{where}: selfguide.label_filter")
            section["labels_in_vote"] = "constrained" if constrain else "exact" if exact else "any"
        if without:
            section["without"] = without
        data["selfguide"] = section
    if renamed:
        warn(f"warning: {where}: old setting names read as today's ({', '.join(renamed)}); "
             "`config --print` shows the current names")
    return data


def _old_bool(value: Any, where: str) -> bool:
    """An old on/off setting's value, validated as today's boolean settings are (a typo is an error, not off)."""
    try:
        return TypeAdapter(bool).validate_python(value)
    except ValidationError:
        raise UserError(f"{where} (an old setting name): expected true or false, got {value!r}") from None


def _validate(data: dict[str, Any], where: str) -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        if first["type"] == "extra_forbidden":
            raise UserError(f"{where}: unknown setting '{loc}'{_suggestion(first['loc'])}") from None
        raise UserError(f"{where}: {loc}: {first['msg'].removeprefix('Value error, ')}") from None


def _suggestion(loc: tuple) -> str:
    """'; did you mean selfguide.num_inputs?' for a misspelt key, from the valid keys at its level."""
    model: type[BaseModel] = Config
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return ""
        model = annotation
    close = difflib.get_close_matches(str(loc[-1]), list(model.model_fields), n=1, cutoff=0.5)
    prefix = ".".join(str(p) for p in loc[:-1])
    return f"; did you mean '{prefix + '.' if prefix else ''}{close[0]}'?" if close else \
        f"; valid keys here: {', '.join(model.model_fields)}"


def load_config(
    path: str | Path | None = None, overrides: dict[str, Any] | None = None, preset: dict[str, Any] | None = None,
    warn: Callable[[str], None] = lambda line: print(line, file=sys.stderr),
) -> Config:
    """Defaults <- preset (e.g. the demo's sizes) <- YAML file <- overrides (None values are ignored).
    Old setting names are read as today's, with one warning line (`migrate_old_keys`)."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise UserError(f"config file not found: {p}")
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except UnicodeDecodeError as exc:
            raise UserError(f"{p}: not UTF-8 text (byte {exc.start}); save the file as UTF-8") from None
        except OSError as exc:
            raise UserError(f"cannot read config file {p}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise UserError(f"{p}: invalid YAML ({exc.__class__.__name__})") from None
        if not isinstance(loaded, dict):
            raise UserError(f"{p}: a config file must hold a mapping")
        data = migrate_old_keys(loaded, str(p), warn)
    _validate(data, str(path or "config"))
    if preset:
        data = deep_merge(preset, data)
    if overrides:
        data = deep_merge(data, migrate_old_keys(_drop_none(overrides), "command line", warn))
    return _validate(data, "command line")


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            v = _drop_none(v)
            if v:
                out[k] = v
        elif v is not None:
            out[k] = v
    return out


def setting_help(dotted: str) -> str:
    """A setting's one-line explanation and default, from the configuration model itself, for the
    command-line options that override it (so help texts never drift from the defaults)."""
    model: type[BaseModel] = Config
    *sections, name = dotted.split(".")
    for section in sections:
        model = model.model_fields[section].annotation  # type: ignore[assignment]
    field = model.model_fields[name]
    default = field.get_default(call_default_factory=True)
    return field.description if default in (None, [], "") else f"{field.description} (default: {default})"
