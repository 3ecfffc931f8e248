"""The export gate: a faithful export passes; each planted fault is caught with its own message."""

from __future__ import annotations

import random

import numpy as np
import pytest

from selfguide_lite.config import ExportConfig
from selfguide_lite.export import convert_to_gguf, quantize_gguf
from selfguide_lite.gate import ExportRejected, check_export
from tests.helpers import CORPUS

TEMPLATE = ("{% for m in messages %}<|user|>{{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")
PROMPTS = [f"Input: {w} number {i} is here\nOutput:" for i, w in enumerate(["the team wins", "heavy rain", "a bakery"] * 3)]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny chat model (untied output matrix), briefly trained so its answers are not ties, and its
    faithful f16 and q8_0 exports."""
    from selfguide_lite.toy_models.tiny import build_tiny_model, pretrain, save_checkpoint

    root = tmp_path_factory.mktemp("gate")
    model, tok = build_tiny_model(root / "hf", CORPUS, vocab_size=320, seed=3, chat_template=TEMPLATE)
    pretrain(model, tok, CORPUS, seconds=None, log=lambda m: None, steps=60)
    save_checkpoint(model, tok, root / "hf")
    f16 = convert_to_gguf(root / "hf", root / "m.f16.gguf", "f16")
    q8 = quantize_gguf(f16, root / "m.q8_0.gguf", "q8_0")
    return root, f16, q8


def rewrite(src, dst, kv=None, drop=(), shuffle_vocab=False):
    """Copy a GGUF changing metadata or dropping tensors: a converter bug, planted."""
    import gguf

    reader = gguf.GGUFReader(str(src), "r")
    writer = gguf.GGUFWriter(str(dst), reader.fields["general.architecture"].contents())
    kv = dict(kv or {})
    n_tokens = len(reader.fields["tokenizer.ggml.tokens"].contents())
    perm = list(range(n_tokens))
    if shuffle_vocab:
        body = perm[10:]
        random.Random(0).shuffle(body)
        perm = perm[:10] + body
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key in ("general.architecture", "general.alignment"):
            continue
        value = kv.pop(key, field.contents())
        if shuffle_vocab and key in ("tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type"):
            value = [value[i] for i in perm]
        vtype = field.types[0]
        writer.add_key_value(key, value, vtype, sub_type=field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None)
    for key, value in kv.items():  # keys the source did not have
        writer.add_key_value(key, value, gguf.GGUFValueType.STRING)
    for t in reader.tensors:
        if t.name not in drop:
            writer.add_tensor(t.name, np.asarray(t.data))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dst


def gate(root, f16, quant=None):
    return check_export(root / "hf", f16, quant or f16, PROMPTS, ExportConfig())


def test_a_faithful_export_passes_with_its_numbers(exported):
    root, f16, q8 = exported
    record = gate(root, f16, q8)
    assert record["passed"] and record["problems"] == []
    assert record["logits"]["top1_agreement"] >= 0.9 and record["logits"]["max_diff_share_of_range"] < 0.05
    answers = record["answers"]
    assert answers["prompts"] == len(PROMPTS) and answers["answer_tokens"] > 0 and answers["token_agreement"] >= 0.85


def test_answer_agreement_counts_near_ties_and_rejects_clear_changes():
    from selfguide_lite.gate import compare_answers

    rows = np.zeros((2, 5), dtype=np.float32)
    rows[0, [1, 2]] = [3.0, 2.99]  # a near tie: the 16-bit model picks 1 by 0.01 nats
    rows[1, [3, 4]] = [5.0, 1.0]  # a clear choice: 4 is e^-4 as likely as 3
    flipped = rows.copy()
    flipped[0, [1, 2]] = [2.99, 3.0]
    tie = compare_answers([[1, 3]], [[2, 3]], [rows], [flipped], tie_margin=0.69)
    assert tie["token_agreement"] == 1.0 and tie["exact_token_agreement"] == 0.5 and tie["ties"] == 1 and tie["agree"] == 1
    assert 0 < tie["mean_kl"] < 1e-3
    clear = compare_answers([[1, 3]], [[1, 4]], [rows], [rows], tie_margin=0.69)
    assert clear["token_agreement"] == 0.5 and clear["ties"] == 0 and clear["agree"] == 0
    strict = compare_answers([[1, 3]], [[2, 3]], [rows], [flipped], tie_margin=0.0)
    assert strict["token_agreement"] == 0.5 and strict["agree"] == 0


def test_logit_agreement_counts_a_near_tie_of_the_merged_model_and_not_a_clear_flip():
    from selfguide_lite.gate import top1_matches

    merged = np.zeros((3, 4), dtype=np.float32)
    merged[0, [0, 1]] = [4.0, 3.98]  # the merged model barely prefers 0
    merged[1, 2] = 6.0
    merged[2, [1, 3]] = [5.0, 1.0]  # a clear choice of 1
    f16 = merged.copy()
    f16[0, [0, 1]] = [3.98, 4.0]  # the conversion's rounding flips the near tie
    assert top1_matches(merged, f16, tie_margin=0.69) == (2, 1)
    f16[2, [1, 3]] = [1.0, 5.0]  # and a clear change
    assert top1_matches(merged, f16, tie_margin=0.69) == (1, 1)
    assert top1_matches(merged, f16, tie_margin=0.0) == (1, 0)


def _planted(exported, tmp_path, **fault):
    root, f16, _ = exported
    bad = rewrite(f16, tmp_path / "bad.f16.gguf", **fault)
    with pytest.raises(ExportRejected) as caught:
        gate(root, bad, quantize_gguf(bad, tmp_path / "bad.q8_0.gguf", "q8_0"))
    assert caught.value.record["passed"] is False
    return str(caught.value)


def test_wrong_chat_template_is_caught(exported, tmp_path):
    msg = _planted(exported, tmp_path, kv={"tokenizer.chat_template": "{{ messages[0]['content'] }}"})
    assert "chat template differs from the tokenizer's" in msg


def test_wrong_eos_id_is_caught(exported, tmp_path):
    msg = _planted(exported, tmp_path, kv={"tokenizer.ggml.eos_token_id": 7})
    assert "the GGUF's EOS id 7 differs from the tokenizer's 2" in msg


def test_shuffled_vocabulary_is_caught(exported, tmp_path):
    msg = _planted(exported, tmp_path, shuffle_vocab=True)
    assert "tokenizer disagrees with the model's" in msg


def test_lost_output_weights_are_caught(exported, tmp_path):
    msg = _planted(exported, tmp_path, drop=("output.weight",))
    assert "logits of the f16 conversion differ from the merged model" in msg


def test_converter_and_runtime_agree_and_a_broken_runtime_is_one_error(tmp_path, monkeypatch):
    from selfguide_lite import compat
    from selfguide_lite.errors import UserError

    monkeypatch.setenv("SELFGUIDE_MODELS_DIR", str(tmp_path))
    rec = compat.converter_runtime_check()
    assert rec["ok"] and rec["cached"] is False and rec["versions"]["llama-cpp-python"]
    assert compat.converter_runtime_check()["cached"] is True  # once per pair of versions
    assert "loads and decodes" in compat.compat_line(rec)

    def refuse(*a, **k):
        raise UserError("llama.cpp could not load tiny.gguf: unknown pre-tokenizer type")

    monkeypatch.setattr("selfguide_lite.engine.llama.load_llama", refuse)
    with pytest.raises(UserError) as caught:
        compat.converter_runtime_check(use_cache=False)
    assert "cannot load a GGUF written by the installed converter" in str(caught.value)
    assert "Repair: pip install" in str(caught.value)
