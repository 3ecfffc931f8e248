"""One configuration model: defaults (SPEC's bold numbers), then a YAML file, then command-line flags.

Every stage reads its own section; the loop writes the resolved whole to `config.yaml` in the run
directory so a run can be read back and repeated.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import UserError
from .filters import DEFAULT_NOISE_PATTERNS


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EngineConfig(_Section):
    """How the student is served for sampling."""

    backend: Literal["batched", "sequential"] = "batched"
    n_ctx: int = 4096
    n_threads: int | None = None  # None: all cores
    n_parallel: int = 16  # sequences decoded together by the batched engine


class SelfGuideConfig(_Section):
    num_inputs: int = Field(400, ge=1, description="input candidates drawn per round")
    context_inputs: int = Field(10, ge=0, description="accepted inputs shown back to the model")
    wave_size: int = Field(32, ge=1, description="input requests issued together before filtering")
    input_temperature_classification: float = 0.7
    input_temperature_generation: float = 0.9
    input_top_k: int = 40
    num_samples: int = Field(10, ge=1, description="annotation samples per input")
    annotate_temperature: float = 0.2
    annotate_top_k: int = 10
    vote_threshold: float = 0.3
    length_filter: bool | None = None  # None: on for classification, off for generation
    output_length_filter: bool = True  # generation only
    noise_patterns: list[str] = Field(default_factory=lambda: list(DEFAULT_NOISE_PATTERNS))
    constrain_labels: bool = True  # classification: decode only label strings
    balance: bool = True
    max_tokens_factor: float = 2.0  # max tokens = factor x longest demo (in tokens)


class SelfInstructConfig(_Section):
    num_instructions: int = Field(200, ge=1)
    in_context: int = 8
    in_context_generated: int = 2
    temperature: float = 0.7
    top_p: float = 0.5
    presence_penalty: float = 2.0
    max_tokens: int = 512
    rouge_threshold: float = 0.7
    classify_shots_classification: int = 12
    classify_shots_other: int = 19
    instances_per_instruction: int = 5
    instance_temperature: float = 0.0
    instance_max_tokens: int = 300
    wave_size: int = 16
    template: Literal["auto", "fixed"] = "auto"  # auto: chat template when the model has one


class TrainConfig(_Section):
    backend: Literal["auto", "unsloth", "hf"] = "auto"
    quantization: Literal["nf4", "none"] = "nf4"  # nf4 = QLoRA; none = 16-bit LoRA
    lora_r: int = 16
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    target_modules: str | list[str] = "all-linear"
    learning_rate: float = 2e-4
    epochs: float = 3.0
    lr_scheduler: str = "cosine"
    warmup_ratio: float = 0.03
    batch_size: int = 4
    grad_accum: int = 1
    max_seq_length: int = 1024
    seed: int = 0


class ExportConfig(_Section):
    quant: Literal["q4_k_m", "q8_0", "f16", "f32"] = "q4_k_m"
    keep_f16_gguf: bool = False


class EvalConfig(_Section):
    limit: int = 100
    constrain_labels: bool = False  # measure what the model writes, as the benchmark does
    max_tokens: int | None = None  # None: 2x the longest reference in the task (tokens)


class LoopConfig(_Section):
    rounds: int = Field(2, ge=0)
    method: Literal["self-guide", "self-instruct"] = "self-guide"
    train_from: Literal["base", "previous"] = "base"
    data: Literal["latest", "accumulate"] = "latest"
    promote_tolerance: float = 1.0


class Config(_Section):
    task: str | None = None
    model: str | None = None
    seeds: str | None = None
    eval_tasks: list[str] = Field(default_factory=list)
    task_type: Literal["classification", "generation"] | None = None
    labels: list[str] | None = None
    run_dir: str | None = None
    seed: int = 0
    engine: EngineConfig = Field(default_factory=EngineConfig)
    selfguide: SelfGuideConfig = Field(default_factory=SelfGuideConfig)
    selfinstruct: SelfInstructConfig = Field(default_factory=SelfInstructConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    loop: LoopConfig = Field(default_factory=LoopConfig)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _validate(data: dict[str, Any], where: str) -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise UserError(f"{where}: {loc}: {first['msg']}") from None


def load_config(
    path: str | Path | None = None, overrides: dict[str, Any] | None = None, preset: dict[str, Any] | None = None
) -> Config:
    """Defaults <- preset (e.g. the demo's sizes) <- YAML file <- overrides (None values are ignored)."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise UserError(f"config file not found: {p}")
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise UserError(f"{p}: invalid YAML ({exc.__class__.__name__})") from None
        if not isinstance(loaded, dict):
            raise UserError(f"{p}: a config file must hold a mapping")
        data = loaded
    _validate(data, str(path or "config"))
    if preset:
        data = _deep_merge(preset, data)
    if overrides:
        data = _deep_merge(data, _drop_none(overrides))
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
