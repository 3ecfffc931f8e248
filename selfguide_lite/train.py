"""LoRA / QLoRA finetuning with completion-only loss (contract §4).

Two backends behind one function:
- **unsloth** (chosen by `backend: auto` when Unsloth imports and a CUDA GPU is present): its
  FastLanguageModel patches give 2-5x faster QLoRA on NVIDIA GPUs. Optional extra.
- **hf**: transformers + peft + trl. Works everywhere, CPU included. `quantization: nf4` loads the
  base in 4-bit through bitsandbytes (QLoRA; slow on CPU but real); `none` trains LoRA on the
  unquantized 16/32-bit weights, the sensible CPU setting.

Rows are plain `{"prompt", "completion"}` records (TRL's format). The prompt is rendered here
through the same `PromptFormat.render` that sampling and evaluation use, from the HF tokenizer's
chat template, so all three see identical text. The trainer saves a checkpoint each epoch; an
interrupted run resumes from the last one.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from . import progress
from .config import TrainConfig
from .errors import UserError
from .hf_tokenizer import load_tokenizer
from .models import resolve_model_source
from .progress import quiet_libraries
from .prompts import PromptFormat
from .store import atomic_dir, read_json, read_jsonl, value_hash, write_json

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class EmptyTrainingSet(UserError):
    """No row survived synthesis: there is nothing to train on this round."""


class TrainingDiverged(UserError):
    """The loss became NaN/inf or exploded: the adapter is worthless and no adapter is written."""


def choose_backend(cfg: TrainConfig) -> str:
    if cfg.backend != "auto":
        return cfg.backend
    import torch

    if torch.cuda.is_available() and importlib.util.find_spec("unsloth") is not None:
        return "unsloth"
    return "hf"


NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of CPUs that compute bfloat16 natively


def training_precision(requested: str, on_gpu: bool, flags: frozenset[str] | None = None) -> tuple[str, str]:
    """The compute precision training uses ('bfloat16' or 'float32') and why, in words.

    `auto` takes bfloat16 only where the hardware computes it: on a CPU without AVX512_BF16 or AMX-BF16
    PyTorch emulates it, slower than float32 (pytorch issues 86550 and 146508), so the choice comes from
    the CPU's flags, not a blanket switch. A CPU's bfloat16 is autocast: matrix products in bfloat16,
    weights, LoRA parameters and optimizer state in float32 (measured faster than bfloat16 weights)."""
    if requested != "auto":
        return requested, "set by train.precision"
    if on_gpu:
        import torch

        native = torch.cuda.is_bf16_supported()
        return ("bfloat16", "the GPU supports it") if native else ("float32", "the GPU does not support bfloat16")
    if flags is None:
        from .runtime import cpu_flags

        flags = cpu_flags()
    native = sorted(set(NATIVE_BF16_FLAGS) & flags)
    if native:
        return "bfloat16", f"the CPU computes bfloat16 natively ({', '.join(native)})"
    return "float32", "the CPU has no native bfloat16 (no avx512_bf16 or amx_bf16): emulated bfloat16 is slower"


def resolve_quantization(cfg: TrainConfig) -> TrainConfig:
    """`quantization: auto` made concrete: QLoRA (nf4) on a CUDA GPU, 16-bit LoRA on a CPU."""
    if cfg.quantization != "auto":
        return cfg
    import torch

    return cfg.model_copy(update={"quantization": "nf4" if torch.cuda.is_available() else "none"})


def load_rows(data_path: str | Path) -> list[dict[str, str]]:
    """Training rows `{"prompt", "completion"}`; a bad line is one error naming it."""
    rows = read_jsonl(data_path, "training data", required={"prompt": str, "completion": str})
    if not rows:
        raise EmptyTrainingSet(f"{data_path} holds no training rows")
    return rows


def render_rows(rows: list[dict[str, str]], fmt: PromptFormat) -> list[dict[str, str]]:
    return [{"prompt": fmt.render(r["prompt"]), "completion": fmt.answer(r["completion"])} for r in rows]


def _sft_config(cfg: TrainConfig, out: Path, n_rows: int, on_gpu: bool, bf16: bool):
    from trl import SFTConfig

    return SFTConfig(
        output_dir=str(out),
        num_train_epochs=cfg.epochs,
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_ratio,  # a float in [0, 1) is a ratio of total steps
        weight_decay=0.0,
        logging_steps=max(1, n_rows // (cfg.batch_size * 4) or 1),
        save_strategy="epoch",
        save_total_limit=1,
        report_to=[],
        seed=cfg.seed,
        max_length=cfg.max_seq_length,
        completion_only_loss=True,
        use_cpu=not on_gpu,
        bf16=bf16,
        fp16=False,
        dataloader_num_workers=0,
        disable_tqdm=True,
        dataset_num_proc=None,
        gradient_checkpointing=on_gpu if cfg.gradient_checkpointing is None else cfg.gradient_checkpointing,
    )


def build_hf_trainer(rows: list[dict[str, str]], source: str, cfg: TrainConfig, work_dir: Path,
                     use_chat_template: bool = True):
    """transformers + peft + trl trainer (QLoRA when cfg.quantization == 'nf4')."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM
    from trl import SFTTrainer

    cfg = resolve_quantization(cfg)
    on_gpu = torch.cuda.is_available()
    bf16 = training_precision(cfg.precision, on_gpu)[0] == "bfloat16"
    tok = load_tokenizer(source)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    fmt = PromptFormat.from_tokenizer(tok, use_chat_template)
    load_kwargs: dict[str, Any] = {"use_safetensors": True}
    if cfg.quantization == "nf4":
        from transformers import BitsAndBytesConfig

        compute = torch.bfloat16 if bf16 else torch.float32
        load_kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=compute
        )
        load_kwargs["dtype"] = compute
        if on_gpu:
            load_kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", "0"))}  # DDP: one GPU per process
    else:  # a CPU keeps float32 weights and optimizer state; bfloat16 there is autocast (SFTConfig bf16)
        load_kwargs["dtype"] = "auto" if on_gpu else torch.float32
    model = AutoModelForCausalLM.from_pretrained(source, **load_kwargs)
    if cfg.quantization == "nf4":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    peft_config = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=cfg.target_modules,
        bias="none",
        task_type="CAUSAL_LM",
    )
    dataset = Dataset.from_list(render_rows(rows, fmt))
    trainer_class = SFTTrainer
    if cfg.shared_prefix == "auto":
        from .prefix_sharing import shared_prefix_trainer_class

        trainer_class = shared_prefix_trainer_class(SFTTrainer)
    trainer = trainer_class(
        model=model,
        args=_sft_config(cfg, work_dir, len(rows), on_gpu, bf16),
        train_dataset=dataset,
        processing_class=tok,
        peft_config=peft_config,
    )
    if bf16 and not on_gpu:
        prepare_cpu_bfloat16(trainer.model)
    return trainer, tok


CPU_BF16_ATTENTION = "selfguide_sdpa_float32"


def prepare_cpu_bfloat16(model) -> None:
    """The CPU's bfloat16 form, three changes to plain autocast, each measured (torch profiler, one epoch
    of task1195's rows, SmolLM2, AMD EPYC with AVX512_BF16):
    - the frozen layers' answers are handed on in float32 (`keep_adapter_sums_float32`: quality);
    - their weights are stored in bfloat16 once: autocast otherwise casts every frozen weight on every
      call (14 % of the step in copies). It is the value autocast's cast gives, so the products are the
      same; embeddings, norms and LoRA weights stay float32;
    - attention runs in float32: PyTorch's CPU flash attention in bfloat16 took 2.4x the float32 time
      (backward 2.2 s against 0.94 s);
    - the output layer runs in float32: it is tied to the embeddings (float32), and autocast would cast
      the whole matrix on every call to score the few trained positions; for Gemma 3's 262k-token
      vocabulary (168M of its 270M parameters) that made bfloat16 slower than float32 (0.93x)."""
    import torch

    keep_adapter_sums_float32(model)
    from peft.tuners.lora import LoraLayer

    for module in model.modules():
        base = getattr(module, "base_layer", None)
        # 16-bit LoRA only: a 4-bit base (bitsandbytes' Linear4bit is an nn.Linear too) keeps its packed weight
        if isinstance(module, LoraLayer) and isinstance(base, torch.nn.Linear) and base.weight.dtype == torch.float32:
            base.weight.data = base.weight.data.to(torch.bfloat16)
    head = model.get_output_embeddings()
    if isinstance(head, torch.nn.Linear) and head.weight.dtype == torch.float32:
        head.forward = partial(_float32_linear, head)
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    AttentionInterface.register(CPU_BF16_ATTENTION, _float32_sdpa)
    AttentionMaskInterface.register(CPU_BF16_ATTENTION, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])  # SDPA's own masks
    model.set_attn_implementation(CPU_BF16_ATTENTION)


def _float32_linear(layer, x):
    import torch

    with torch.autocast("cpu", enabled=False):
        return torch.nn.functional.linear(x.float(), layer.weight, layer.bias)


def _float32_sdpa(module, query, key, value, attention_mask, **kwargs):
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    mask = attention_mask.float() if attention_mask is not None and attention_mask.is_floating_point() else attention_mask
    with torch.autocast("cpu", enabled=False):
        return sdpa_attention_forward(module, query.float(), key.float(), value.float(), mask, **kwargs)


def keep_adapter_sums_float32(model) -> int:
    """Under autocast a frozen linear layer answers in bfloat16, and peft adds the LoRA branch to that
    answer in its dtype: a young adapter's part (B starts at zero) is below bfloat16's resolution (2**-8
    of the answer) and is rounded away, so the first steps learn almost nothing (measured: the loss curve
    lagged float32's by 0.3-0.7 per step, scripts/bench_precision.py). Handing the frozen layer's answer
    on in float32 keeps the adapter's part in the sum; the matrix product itself stays bfloat16.
    Returns the number of layers changed."""
    import torch
    from peft.tuners.lora import LoraLayer

    changed = 0
    for module in model.modules():
        if isinstance(module, LoraLayer) and isinstance(getattr(module, "base_layer", None), torch.nn.Module):
            module.base_layer.register_forward_hook(_answer_in_float32)
            changed += 1
    return changed


def _answer_in_float32(_module, _inputs, output):
    return output.float()


def build_unsloth_trainer(rows: list[dict[str, str]], source: str, cfg: TrainConfig, work_dir: Path,
                          use_chat_template: bool = True):
    """Unsloth's FastLanguageModel (GPU): same data, same LoRA settings, same completion-only loss."""
    import unsloth  # noqa: F401  (must come before transformers/trl to patch them)
    from datasets import Dataset
    from trl import SFTTrainer
    from unsloth import FastLanguageModel

    cfg = resolve_quantization(cfg)
    model, tok = FastLanguageModel.from_pretrained(
        model_name=source, max_seq_length=cfg.max_seq_length, load_in_4bit=cfg.quantization == "nf4", dtype=None
    )
    targets = LORA_TARGETS if cfg.target_modules == "all-linear" else cfg.target_modules
    model = FastLanguageModel.get_peft_model(
        model,
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=targets,
        bias="none",
        use_gradient_checkpointing="unsloth",
        random_state=cfg.seed,
    )
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    fmt = PromptFormat.from_tokenizer(tok, use_chat_template)

    trainer = SFTTrainer(
        model=model,
        args=_sft_config(cfg, work_dir, len(rows), True, training_precision(cfg.precision, True)[0] == "bfloat16"),
        train_dataset=Dataset.from_list(render_rows(rows, fmt)),
        processing_class=tok,
    )
    return trainer, tok


def _progress_callback(bar: progress.Bar, divergence_factor: float):
    """Moves the training bar (steps, loss), and guards against divergence: a NaN/inf loss or gradient
    norm, or a loss above `divergence_factor` times the first one logged, raises `TrainingDiverged`."""
    import math

    from transformers import TrainerCallback

    class Progress(TrainerCallback):
        first_loss: float | None = None

        def on_train_begin(self, args, state, control, **kwargs):
            bar.set_total(state.max_steps)

        def on_step_end(self, args, state, control, **kwargs):
            bar.advance(state.global_step - bar.done)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not logs or "loss" not in logs:
                return
            loss, grad = float(logs["loss"]), float(logs.get("grad_norm", 0.0))
            bar.fields["loss"] = f"{loss:.4f}"
            if not math.isfinite(loss) or not math.isfinite(grad):
                raise TrainingDiverged(f"training diverged at step {state.global_step}: loss {loss}, gradient norm "
                                       f"{grad} (lower train.learning_rate, now {args.learning_rate:g})")
            self.first_loss = self.first_loss or loss
            if loss > divergence_factor * self.first_loss:
                raise TrainingDiverged(f"training diverged at step {state.global_step}: loss {loss:.3g} is over "
                                       f"{divergence_factor:g}x the first loss {self.first_loss:.3g} (lower "
                                       f"train.learning_rate, now {args.learning_rate:g})")

    return Progress()


def _is_out_of_memory(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def train_adapter(
    data_path: str | Path,
    model: str | Path,
    out_dir: str | Path,
    cfg: TrainConfig | None = None,
    log: Callable[[str], None] = print,
    use_chat_template: bool = True,
) -> dict[str, Any]:
    """Finetune a LoRA adapter on `data_path` and save it (with the tokenizer) to `out_dir`.

    `use_chat_template=False` renders prompts as plain text even when the tokenizer has a chat
    template (Self-Instruct's fixed instruction/input/response format).
    """
    cfg = resolve_quantization(cfg or TrainConfig())
    rows = load_rows(data_path)
    source = resolve_model_source(model, log)
    backend = choose_backend(cfg)
    out_dir = Path(out_dir)
    work_dir = out_dir.with_name(out_dir.name + ".checkpoints")
    import torch

    precision, why = training_precision(cfg.precision, torch.cuda.is_available())
    log(f"training: {len(rows)} rows, backend {backend}, {cfg.quantization if cfg.quantization == 'nf4' else '16-bit'} "
        f"LoRA r={cfg.lora_r}, {precision} ({why})")
    t0 = time.monotonic()
    quiet_libraries()
    cfg, (result, resumed, trainer, tok) = _train_within_memory(rows, source, cfg, work_dir, backend, use_chat_template, log)
    info = {
        "backend": backend,
        "quantization": cfg.quantization,
        "precision": precision,
        "rows": len(rows),
        "steps": int(result.global_step),
        "batch_size": cfg.batch_size,
        "grad_accum": cfg.grad_accum,
        "train_loss": round(float(result.training_loss), 4),
        "seconds": round(time.monotonic() - t0, 1),
        "base_model": str(model),
        "resumed": resumed,
        # micro-batches whose shared prompt ran once (train.shared_prefix), and those computed row by row
        "shared_prefix_batches": getattr(trainer, "shared_batches", 0),
        "plain_batches": getattr(trainer, "plain_batches", None),
    }
    if _is_main_process():  # under DDP (accelerate launch / torchrun) only rank 0 writes the adapter
        with atomic_dir(out_dir) as tmp:
            trainer.model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            (tmp / "train_info.json").write_text(json.dumps(info, indent=2))
        shutil.rmtree(work_dir, ignore_errors=True)
        log(f"training done: {info['steps']} steps, loss {info['train_loss']}, {info['seconds']}s")
    return info


def _train_within_memory(rows, source, cfg: TrainConfig, work_dir: Path, backend: str, use_chat_template: bool,
                         log: Callable[[str], None]):
    """`_train_once`, retried with half the micro-batch (and twice the accumulation, so the effective
    batch stays) when the accelerator runs out of memory. Returns the settings that fitted and the result."""
    for attempt in range(cfg.oom_retries + 1):
        try:
            return cfg, _train_once(rows, source, cfg, work_dir, backend, use_chat_template, log)
        except Exception as exc:
            if not _is_out_of_memory(exc):
                if isinstance(exc, TrainingDiverged):
                    shutil.rmtree(work_dir, ignore_errors=True)  # never resume from a diverged state
                raise
            _free_accelerator_memory()
            if cfg.batch_size == 1 or attempt == cfg.oom_retries:
                raise UserError(f"out of GPU memory while training at micro-batch {cfg.batch_size}: lower "
                                f"train.max_seq_length (now {cfg.max_seq_length}) or use train.quantization: nf4") from None
            cfg = cfg.model_copy(update={"batch_size": cfg.batch_size // 2, "grad_accum": cfg.grad_accum * 2})
            log(f"out of GPU memory: retrying with micro-batch {cfg.batch_size} x {cfg.grad_accum} accumulation steps")
            shutil.rmtree(work_dir, ignore_errors=True)
    raise AssertionError("unreachable: the last attempt returns or raises")


def _is_main_process() -> bool:
    """Rank 0 of a torchrun/accelerate launch, or the only process."""
    return int(os.environ.get("RANK", "0")) == 0


CHECKPOINT_KEY = "selfguide_inputs.json"  # what the checkpoints in a work directory were trained on


def _train_once(rows, source: str, cfg: TrainConfig, work_dir: Path, backend: str, use_chat_template: bool, log):
    """Build the trainer and train, resuming from the work directory's last epoch checkpoint only
    when it was made from the same rows, base and settings."""
    key = {"rows": value_hash(rows), "source": str(source), "cfg": cfg.model_dump(), "chat": use_chat_template}
    main = _is_main_process()  # only rank 0 tidies the work directory; every rank reads it the same way
    resume = (work_dir / CHECKPOINT_KEY).is_file() and read_json(work_dir / CHECKPOINT_KEY) == key \
        and _drop_incomplete_checkpoints(work_dir, delete=main) > 0
    if not resume and main:
        shutil.rmtree(work_dir, ignore_errors=True)
        work_dir.mkdir(parents=True)
        write_json(work_dir / CHECKPOINT_KEY, key)
    build = build_unsloth_trainer if backend == "unsloth" else build_hf_trainer
    trainer, tok = build(rows, source, cfg, work_dir, use_chat_template)
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    if resume:
        log(f"  resuming from {max(work_dir.glob('checkpoint-*'), key=lambda p: int(p.name.split('-')[-1])).name}")
    with progress.bar("training", None, "steps") as bar:
        trainer.add_callback(_progress_callback(bar, cfg.divergence_factor))
        result = trainer.train(resume_from_checkpoint=True if resume else None)
    return result, resume, trainer, tok


CHECKPOINT_FILES = ("trainer_state.json", "optimizer.pt", "scheduler.pt", "rng_state.pth")


def _drop_incomplete_checkpoints(work_dir: Path, delete: bool = True) -> int:
    """The trainer writes a checkpoint file by file; a kill can leave the newest one partial, and
    resuming from it would fail. Delete those; return how many complete checkpoints remain."""
    complete = 0
    for ckpt in work_dir.glob("checkpoint-*"):
        has_weights = any(ckpt.glob("adapter_model.*")) or any(ckpt.glob("model*.safetensors"))
        if has_weights and all((ckpt / name).is_file() for name in CHECKPOINT_FILES):
            complete += 1
        elif delete:
            shutil.rmtree(ckpt, ignore_errors=True)
    return complete


def _free_accelerator_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
