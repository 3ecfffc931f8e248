"""Training precision (issue 43): the choice comes from the CPU's flags, and a bfloat16 step (autocast
over float32 weights, the CPU form) equals a float32 step within what bfloat16 allows, through the plain
and the shared-prefix computation alike."""

from __future__ import annotations

import pytest
import torch

from selfguide_lite.prefix_sharing import plain_loss, shared_prefix_length, shared_prefix_loss
from tests.test_prefix_sharing import _batch, lora_model

# bfloat16 keeps 8 significant bits (relative step 2**-8 = 0.4 %). A loss is a mean over many tokens, so
# its error averages down: 0.1 % relative (measured 2e-5 to 7e-5 on the tiny models). A gradient entry
# sums products rounded to bfloat16 through every layer of the backward pass: 5 % of the tensor's largest
# entry (measured 2.7-3.9 %). An autocast that were off would give differences of exactly zero, which the
# tests refuse too: they must see bfloat16 at work.
LOSS_REL_TOL = 1e-3
GRAD_REL_TOL = 0.05


@pytest.mark.parametrize("flags, precision", [
    ({"avx2", "avx512f", "avx512_bf16"}, "bfloat16"),  # AMD Zen 4 / Intel Cooper Lake
    ({"avx2", "avx512f", "amx_tile", "amx_bf16", "amx_int8"}, "bfloat16"),  # Intel Sapphire Rapids
    ({"avx2", "avx512f", "avx512_vnni"}, "float32"),  # AVX-512 without bfloat16 (Skylake, Ice Lake)
    ({"avx2", "fma"}, "float32"),  # AMD Zen 2/3 and older Intel: emulated bfloat16 is slower
    (set(), "float32"),
])
def test_auto_precision_comes_from_the_cpu_flags(flags, precision):
    from selfguide_lite.train import training_precision

    chosen, why = training_precision("auto", False, frozenset(flags))
    assert chosen == precision
    assert ("natively" in why) == (precision == "bfloat16") and why


def test_a_named_precision_is_kept_and_unknown_names_are_refused():
    from selfguide_lite.config import TrainConfig
    from selfguide_lite.train import training_precision

    assert training_precision("float32", False, frozenset({"avx512_bf16"})) == ("float32", "set by train.precision")
    assert training_precision("bfloat16", False, frozenset({"avx2"}))[0] == "bfloat16"
    with pytest.raises(ValueError):
        TrainConfig(precision="fp16")


def _step(model, fn, bf16: bool):
    model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = fn()
    loss.backward()
    grads = {n: q.grad.detach().clone() for n, q in model.named_parameters() if q.grad is not None}
    assert all(g.dtype == torch.float32 for g in grads.values())  # LoRA weights and their gradients stay float32
    return loss.item(), grads


def _worst(a: dict, b: dict) -> float:
    return max(float((a[n] - b[n]).abs().max() / a[n].abs().max()) for n in a)


@pytest.mark.parametrize("arch_fixture", ["tiny_llama", "tiny_gemma3"])
def test_a_bfloat16_step_equals_float32_within_the_stated_tolerance(arch_fixture, request):
    """Plain and shared-prefix losses, each under autocast, against the float32 plain step."""
    from selfguide_lite.hf_tokenizer import load_tokenizer
    from selfguide_lite.train import prepare_cpu_bfloat16

    hf = request.getfixturevalue(arch_fixture)
    model = lora_model(hf)
    ids, mask, labels = _batch(load_tokenizer(hf))
    p = shared_prefix_length(ids, mask, labels)
    loss32, g32 = _step(model, lambda: plain_loss(model, ids, mask, labels, num_items=17), bf16=False)
    prepare_cpu_bfloat16(model)  # the product's form: float32 sums, bfloat16 frozen weights, float32 attention
    for fn in (lambda: plain_loss(model, ids, mask, labels, num_items=17),
               lambda: shared_prefix_loss(model, ids, mask, labels, p, num_items=17)):
        loss16, g16 = _step(model, fn, bf16=True)
        assert set(g16) == set(g32) and len(g32) > 10
        assert loss16 != loss32 and _worst(g32, g16) > 0  # bfloat16 really computed
        assert abs(loss16 - loss32) / abs(loss32) < LOSS_REL_TOL
        assert _worst(g32, g16) < GRAD_REL_TOL, _worst(g32, g16)


def test_the_trainer_autocasts_on_a_cpu_when_bfloat16_is_chosen(tiny_llama, tmp_path):
    """The product path: the trainer built for bfloat16 keeps float32 weights and turns autocast on; the
    float32 one does not."""
    from selfguide_lite.config import TrainConfig
    from selfguide_lite.train import build_hf_trainer

    rows = [{"prompt": f"Input: rain {i}\nOutput:", "completion": "weather"} for i in range(4)]
    for precision, bf16 in (("bfloat16", True), ("float32", False)):
        trainer, _ = build_hf_trainer(rows, str(tiny_llama), TrainConfig(quantization="none", precision=precision),
                                      tmp_path / precision)
        assert trainer.args.bf16 is bf16
        trained = {p.dtype for p in trainer.model.parameters() if p.requires_grad}
        frozen_linear = {m.base_layer.weight.dtype for m in trainer.model.modules() if hasattr(m, "lora_A")}
        assert trained == {torch.float32}  # LoRA weights (and so the optimizer state) stay float32
        assert frozen_linear == {torch.bfloat16 if bf16 else torch.float32}  # cast once, not on every call
        embeddings = trainer.model.get_input_embeddings().weight.dtype
        assert embeddings == torch.float32  # the residual stream starts, and stays, float32
        assert (trainer.model.config._attn_implementation == "selfguide_sdpa_float32") is bf16
        batch = next(iter(trainer.get_train_dataloader()))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            seen = []
            layer = next(m for m in trainer.model.modules() if hasattr(m, "base_layer") and hasattr(m, "lora_A"))
            hook = layer.register_forward_hook(lambda _m, _i, out, seen=seen: seen.append(out.dtype))
            trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            hook.remove()
        # the frozen layer's answer plus the adapter's part is summed in float32, so a young adapter counts
        assert seen and seen[0] == torch.float32


def test_a_young_adapter_is_not_rounded_away_under_bfloat16(tiny_llama):
    """One LoRA layer whose adapter part is far below the frozen layer's answer (B just out of zero): in a
    bfloat16 sum (2**-8 resolution) that part is rounded away, mostly to nothing; once the frozen answer is
    handed on in float32 the layer adds it as float32 does, within bfloat16's own error on the part."""
    from selfguide_lite.train import keep_adapter_sums_float32

    model = lora_model(tiny_llama)
    layer = next(m for m in model.modules() if hasattr(m, "base_layer") and hasattr(m, "lora_A"))
    for p in layer.lora_B.parameters():
        torch.nn.init.normal_(p, std=1e-4)
    torch.manual_seed(1)
    x = torch.randn(4, 16, layer.base_layer.in_features)

    def adapter_part(bf16: bool) -> torch.Tensor:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return layer(x).float() - layer.base_layer(x).float()

    truth = adapter_part(bf16=False)
    error_before = float((adapter_part(bf16=True) - truth).norm() / truth.norm())
    assert keep_adapter_sums_float32(model) > 10
    error_after = float((adapter_part(bf16=True) - truth).norm() / truth.norm())
    assert error_before > 0.5  # most of the part is lost
    assert error_after < 0.05, (error_before, error_after)
