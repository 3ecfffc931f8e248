"""Guards against losing a run: divergence, GPU out-of-memory, low disk, stale training checkpoints."""

from __future__ import annotations

import json
from collections import namedtuple

import pytest
import torch

from selfguide_lite.config import TrainConfig
from selfguide_lite.errors import UserError
from selfguide_lite.train import TrainingDiverged, train_adapter
from tests.test_train import ROWS, _write

pytestmark = pytest.mark.slow


def test_divergence_stops_training_and_writes_no_adapter(tiny_llama, tmp_path):
    data = _write(tmp_path / "train.jsonl", ROWS)
    lines: list[str] = []
    cfg = TrainConfig(quantization="none", epochs=4, batch_size=2, learning_rate=50.0)
    with pytest.raises(TrainingDiverged, match="training diverged at step") as err:
        train_adapter(data, tiny_llama, tmp_path / "adapter", cfg, log=lines.append)
    assert "learning_rate" in str(err.value)
    assert not (tmp_path / "adapter").exists()
    assert not (tmp_path / "adapter.checkpoints").exists()  # a rerun must not resume a diverged state


def test_out_of_memory_retries_with_a_smaller_micro_batch(tiny_llama, tmp_path, monkeypatch):
    """A trainer that runs out of (GPU) memory above micro-batch 2: the retry halves the micro-batch,
    doubles accumulation, and finishes."""
    import selfguide_lite.train as train

    real_build = train.build_hf_trainer
    seen = []

    def build(rows, source, cfg, work_dir, use_chat_template=True):
        trainer, tok = real_build(rows, source, cfg, work_dir, use_chat_template)
        seen.append((cfg.batch_size, cfg.grad_accum))
        if cfg.batch_size > 2:
            def oom(*a, **k):
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            trainer.train = oom
        return trainer, tok

    monkeypatch.setattr(train, "build_hf_trainer", build)
    data = _write(tmp_path / "train.jsonl", ROWS)
    lines: list[str] = []
    info = train_adapter(data, tiny_llama, tmp_path / "adapter",
                         TrainConfig(quantization="none", epochs=1, batch_size=8, backend="hf"), log=lines.append)
    assert seen == [(8, 1), (4, 2), (2, 4)]
    assert (info["batch_size"], info["grad_accum"]) == (2, 4)
    assert sum("out of GPU memory: retrying" in m for m in lines) == 2
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()

    monkeypatch.setattr(train, "build_hf_trainer", lambda *a, **k: (_ for _ in ()).throw(
        torch.OutOfMemoryError("CUDA out of memory")))
    with pytest.raises(UserError, match="out of GPU memory while training at micro-batch 1"):
        train_adapter(data, tiny_llama, tmp_path / "adapter2",
                      TrainConfig(quantization="none", epochs=1, batch_size=2, backend="hf"), log=lines.append)


def test_checkpoints_of_other_settings_are_not_resumed(tiny_llama, tmp_path):
    data = _write(tmp_path / "train.jsonl", ROWS)
    work = tmp_path / "adapter.checkpoints"
    (work / "checkpoint-4").mkdir(parents=True)
    (work / "selfguide_inputs.json").write_text(json.dumps({"rows": "other"}))
    info = train_adapter(data, tiny_llama, tmp_path / "adapter",
                         TrainConfig(quantization="none", epochs=1, batch_size=4), log=lambda m: None)
    assert info["resumed"] is False and info["steps"] == 2


DiskUsage = namedtuple("DiskUsage", "total used free")


def test_low_disk_is_refused_before_writing(tiny_llama, tmp_path, monkeypatch):
    from selfguide_lite import store
    from selfguide_lite.export import convert_to_gguf, quantize_gguf

    f16 = convert_to_gguf(tiny_llama, tmp_path / "m.f16.gguf", "f16")
    monkeypatch.setattr(store.shutil, "disk_usage", lambda p: DiskUsage(10**9, 10**9, 1024 * 1024))
    with pytest.raises(UserError, match=r"not enough disk space for the f16 GGUF in .*: needs about \d+ MiB, 1 MiB free"):
        convert_to_gguf(tiny_llama, tmp_path / "out" / "again.gguf", "f16")
    with pytest.raises(UserError, match="not enough disk space for the q8_0 GGUF"):
        quantize_gguf(f16, tmp_path / "m.q8_0.gguf", "q8_0")
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["m.f16.gguf"]


def test_a_partially_written_checkpoint_is_dropped_before_resuming(tmp_path):
    from selfguide_lite.train import CHECKPOINT_FILES, _drop_incomplete_checkpoints

    for name, files in (("checkpoint-2", ("adapter_model.safetensors", *CHECKPOINT_FILES)),
                        ("checkpoint-4", ("adapter_model.safetensors", "optimizer.pt"))):  # killed mid-save
        (tmp_path / name).mkdir()
        for f in files:
            (tmp_path / name / f).write_bytes(b"x")
    assert _drop_incomplete_checkpoints(tmp_path) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2"]
