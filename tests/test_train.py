"""Real LoRA / QLoRA training on a tiny model, on CPU."""

import json

import pytest
import torch

from selfguide_lite.config import TrainConfig
from selfguide_lite.errors import UserError
from selfguide_lite.prompts import PromptFormat
from selfguide_lite.train import EmptyTrainingSet, build_hf_trainer, train_adapter

pytestmark = pytest.mark.slow
ROWS = [{"prompt": f"Say the topic.\n\nInput: story {i} about the team\nOutput:", "completion": "sports"}
        for i in range(8)]


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_auto_quantization_is_16_bit_lora_without_a_gpu_and_explicit_choices_stand():
    import torch

    from selfguide_lite.train import resolve_quantization

    assert resolve_quantization(TrainConfig()).quantization == ("nf4" if torch.cuda.is_available() else "none")
    assert resolve_quantization(TrainConfig(quantization="nf4")).quantization == "nf4"
    assert resolve_quantization(TrainConfig(quantization="none")).quantization == "none"


def test_collated_batch_masks_the_prompt(tiny_llama, tmp_path):
    trainer, tok = build_hf_trainer(ROWS, str(tiny_llama), TrainConfig(quantization="none"), tmp_path / "w")
    batch = next(iter(trainer.get_train_dataloader()))
    fmt = PromptFormat(None, tok.bos_token, tok.eos_token)
    for row, ids, labels in zip(ROWS, batch["input_ids"], batch["labels"], strict=False):
        n_prompt = len(tok(fmt.render(row["prompt"]))["input_ids"])
        assert (labels[:n_prompt] == -100).all()
        supervised = ids[labels != -100].tolist()
        assert tok.decode(supervised) .strip() == "sports</s>"
        assert supervised[-1] == tok.eos_token_id


def test_lora_training_changes_the_model_and_lowers_loss(tiny_llama, tmp_path):
    data = _write(tmp_path / "train.jsonl", ROWS)
    cfg = TrainConfig(quantization="none", epochs=4, batch_size=4, learning_rate=5e-3)
    info = train_adapter(data, tiny_llama, tmp_path / "adapter", cfg, log=lambda m: None)
    assert info["backend"] == "hf" and info["steps"] == 8
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    assert not (tmp_path / "adapter.checkpoints").exists()
    from safetensors.torch import load_file

    weights = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in weights.items())


def test_qlora_nf4_trains_on_cpu(tiny_llama, tmp_path):
    pytest.importorskip("bitsandbytes")
    data = _write(tmp_path / "train.jsonl", ROWS[:4])
    info = train_adapter(data, tiny_llama, tmp_path / "adapter",
                         TrainConfig(quantization="nf4", epochs=1, batch_size=2), log=lambda m: None)
    assert info["quantization"] == "nf4" and info["steps"] == 2 and info["train_loss"] > 0
    assert torch.isfinite(torch.tensor(info["train_loss"]))


def test_bad_training_inputs(tmp_path, tiny_llama):
    with pytest.raises(EmptyTrainingSet):
        train_adapter(_write(tmp_path / "e.jsonl", []), tiny_llama, tmp_path / "a")
    with pytest.raises(UserError, match="prompt"):
        train_adapter(_write(tmp_path / "b.jsonl", [{"text": "x"}]), tiny_llama, tmp_path / "a")
    with pytest.raises(UserError, match="not found"):
        train_adapter(_write(tmp_path / "g.jsonl", ROWS), tmp_path / "nope", tmp_path / "a")
