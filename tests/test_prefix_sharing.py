"""Shared-prefix training: the same loss and gradients as the plain per-row computation, and the
trainer uses it only where rows share a prompt."""

from __future__ import annotations

import json

import pytest
import torch

from selfguide_lite.prefix_sharing import (
    IGNORE,
    plain_loss,
    shared_prefix_length,
    shared_prefix_loss,
    trained_positions_loss,
)


def test_prefix_stops_before_the_first_trained_token_and_at_the_first_difference():
    ids = torch.tensor([[5, 6, 7, 8, 9, 1], [5, 6, 7, 3, 9, 2]])
    mask = torch.ones_like(ids)
    labels = torch.full_like(ids, IGNORE)
    labels[:, 5] = ids[:, 5]
    assert shared_prefix_length(ids, mask, labels) == 3  # rows differ at position 3
    labels[0, 2] = 7  # a trained token at 2: its logit comes from position 1, which must be in the tail
    assert shared_prefix_length(ids, mask, labels) == 1
    assert shared_prefix_length(ids, mask, torch.full_like(ids, IGNORE)) == 0
    mask[1, 1] = 0  # padding is never shared
    labels[0, 2] = IGNORE
    assert shared_prefix_length(ids, mask, labels) == 1


def lora_model(hf):
    """A float32 LoRA model in training mode whose B matrices are non-zero, so every adapter gets a gradient."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32),
                           LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear"))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)
    return model.train()


def _batch(tok, n=6):
    prompt = "Say the topic.\n\n" + "Input: the team wins the final number 3 is here\nOutput: sports\n\n" * 4
    rows = [(prompt + f"Input: heavy rain {'hits ' * (i % 3)}Leeds {i}\nOutput:", " weather" if i % 2 else " food")
            for i in range(n)]
    enc = [tok(p)["input_ids"] for p, _ in rows]
    comp = [tok(c, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for _, c in rows]
    width = max(len(a) + len(b) for a, b in zip(enc, comp, strict=True))
    ids = torch.full((n, width), tok.pad_token_id)
    mask = torch.zeros((n, width), dtype=torch.long)
    labels = torch.full((n, width), IGNORE)
    for i, (a, b) in enumerate(zip(enc, comp, strict=True)):
        ids[i, : len(a) + len(b)] = torch.tensor(a + b)
        mask[i, : len(a) + len(b)] = 1
        labels[i, len(a): len(a) + len(b)] = torch.tensor(b)
    return ids, mask, labels


@pytest.mark.parametrize("arch_fixture", ["tiny_llama", "tiny_qwen2", "tiny_gemma3"])
def test_loss_and_gradients_equal_the_plain_computation(arch_fixture, request):
    """The shared-prefix loss and the fallback that skips the prompt's logits (trained_positions_loss)
    both equal one plain forward over the full rows: loss and LoRA gradients."""
    from selfguide_lite.hf_tokenizer import load_tokenizer

    hf = request.getfixturevalue(arch_fixture)
    tok = load_tokenizer(hf)
    model = lora_model(hf)
    ids, mask, labels = _batch(tok)
    p = shared_prefix_length(ids, mask, labels)
    assert p > 40

    def grads(fn):
        model.zero_grad()
        loss = fn()
        loss.backward()
        return loss.item(), {n: q.grad.detach().clone() for n, q in model.named_parameters() if q.grad is not None}

    loss_plain, g_plain = grads(lambda: plain_loss(model, ids, mask, labels, num_items=17))
    loss_shared, g_shared = grads(lambda: shared_prefix_loss(model, ids, mask, labels, p, num_items=17))
    loss_kept, g_kept = grads(lambda: trained_positions_loss(model, ids, mask, labels, num_items=17))
    for loss, g in ((loss_shared, g_shared), (loss_kept, g_kept)):
        assert loss == pytest.approx(loss_plain, rel=1e-5)
        assert set(g_plain) == set(g) and len(g_plain) > 10
        worst = max(float((g_plain[n] - g[n]).abs().max() / g_plain[n].abs().max()) for n in g_plain)
        assert worst < 1e-4, worst


@pytest.mark.slow
def test_trainer_shares_the_prompt_only_where_rows_share_one(tiny_llama, tmp_path):
    """Self-Guide-shaped rows train through the shared path with the plain path's per-step losses;
    rows with different prompts (Self-Instruct) fall back to the plain path."""
    from selfguide_lite.config import TrainConfig
    from selfguide_lite.train import train_adapter

    prompt = "Say the topic.\n\n" + "Input: the team wins the final\nOutput: sports\n\n" * 4
    shared = [{"prompt": prompt + f"Input: heavy rain {i}\n", "completion": "weather"} for i in range(8)]
    different = [{"prompt": f"Task {i}: a bakery opens number {i}\n", "completion": "food"} for i in range(8)]
    infos = {}
    for name, rows, mode in (("shared", shared, "auto"), ("plain", shared, "off"), ("different", different, "auto")):
        data = tmp_path / f"{name}.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
        cfg = TrainConfig(quantization="none", epochs=2, batch_size=4, learning_rate=1e-3, shared_prefix=mode)
        infos[name] = train_adapter(data, tiny_llama, tmp_path / name, cfg, log=lambda m: None)
    assert infos["shared"]["shared_prefix_batches"] == 4 and infos["plain"]["shared_prefix_batches"] == 0
    assert infos["different"]["shared_prefix_batches"] == 0 and infos["different"]["plain_batches"] == 4
    assert infos["shared"]["train_loss"] == pytest.approx(infos["plain"]["train_loss"], abs=1e-3)
