"""Students given as GGUF files: import into a 16-bit checkpoint, its fidelity, the built-in real student,
and the validation/test split that keeps the test set out of every decision."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from selfguide_lite.builtin_students import BUILTIN_STUDENTS, builtin_gguf
from selfguide_lite.errors import UserError
from selfguide_lite.loop import promoted_on_validation
from selfguide_lite.models import import_gguf
from selfguide_lite.store import file_hash
from selfguide_lite.tasks import load_task
from tests.helpers import small_gguf


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "selfguide_lite", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=1800)


# --- the split -----------------------------------------------------------------------------------

def _task_file(tmp_path: Path, n: int, extra: dict | None = None) -> Path:
    doc = {"instruction": "Say yes or no.", "examples": [{"input": "q0", "output": "yes"}],
           "eval": [{"input": f"q{i}", "output": "yes" if i % 2 else "no"} for i in range(n)], **(extra or {})}
    path = tmp_path / "t.json"
    path.write_text(json.dumps(doc))
    return path


def test_split_is_deterministic_disjoint_and_skips_demo_inputs(tmp_path):
    path = _task_file(tmp_path, 30)
    task = load_task(path)
    val, test = task.split("validation", 10, 15), task.split("test", 10, 15)
    assert [i.input for i in val] == [f"q{i}" for i in range(1, 11)]  # q0 is the demo's input
    assert [i.input for i in test] == [f"q{i}" for i in range(11, 26)]
    assert not {i.id for i in val} & {i.id for i in test}
    again = load_task(path)
    assert [i.id for i in again.split("test", 10, 15)] == [i.id for i in test]


def test_split_never_puts_a_validation_input_in_test(tmp_path):
    doc_path = _task_file(tmp_path, 6)
    doc = json.loads(doc_path.read_text())
    doc["eval"].append({"input": "q1", "output": "yes"})  # a repeat of a validation input
    doc_path.write_text(json.dumps(doc))
    task = load_task(doc_path)
    val, test = task.split("validation", 3, 10), task.split("test", 3, 10)
    assert {i.input for i in val} == {"q1", "q2", "q3"}
    assert [i.input for i in test] == ["q4", "q5"]


def test_own_file_may_give_validation_apart(tmp_path):
    path = _task_file(tmp_path, 5, {"validation": [{"input": "v1", "output": "no"}, {"input": "v2", "output": "yes"}]})
    task = load_task(path)
    assert [i.input for i in task.split("validation", 100, 100)] == ["v1", "v2"]
    assert [i.input for i in task.split("test", 100, 100)] == ["q1", "q2", "q3", "q4"]


def test_promotion_reads_only_validation_scores():
    """Would fail if the loop promoted on test scores: validation and test disagree here."""
    worse_on_validation = {"validation": {"primary": 40.0}, "test": {"primary": 90.0}}
    better_on_validation = {"validation": {"primary": 70.0}, "test": {"primary": 10.0}}
    assert not promoted_on_validation(worse_on_validation, best_validation=50.0, tolerance=1.0)
    assert promoted_on_validation(better_on_validation, best_validation=50.0, tolerance=1.0)


# --- GGUF import of tiny models -----------------------------------------------------------------

def _gguf_variants(hf_dir: Path, out: Path) -> dict[str, Path]:
    from selfguide_lite.export import convert_to_gguf, quantize_gguf

    f32 = convert_to_gguf(hf_dir, out / "m-f32.gguf", "f32")
    return {"f32": f32, "q8_0": quantize_gguf(f32, out / "m-q8_0.gguf", "q8_0"),
            "q4_0": quantize_gguf(f32, out / "m-q4_0.gguf", "q4_0")}


@pytest.mark.slow
@pytest.mark.parametrize("arch_fixture", ["tiny_llama", "tiny_qwen2", "tiny_llama3", "tiny_qwen3", "tiny_gemma3"])
def test_tiny_gguf_imports_back_with_measured_fidelity(arch_fixture, request, tmp_path):
    """f32: the imported weights are the original ones (to float16 rounding), so Llama's Q/K
    un-permutation is right, and logits match llama.cpp to 1e-2. Q8_0 / Q4_0: llama.cpp also quantizes
    activations, so the gate is agreement of the top-1 token and a gap small against the logit range.
    Exported again, the import gives back the source file: every tensor (Llama 3's rope_freqs, which
    the import turns into a config entry, included), the vocabulary and llama.cpp's token ids."""
    from safetensors.numpy import load_file

    hf_dir = request.getfixturevalue(arch_fixture)
    files = _gguf_variants(hf_dir, tmp_path)
    cache = tmp_path / "models"
    imported, record = import_gguf(files["f32"], cache=cache)
    ours = load_file(str(imported / "model.safetensors"))
    ref = load_file(str(hf_dir / "model.safetensors"))
    for name, w in ref.items():
        assert ours[name].dtype == np.float16
        np.testing.assert_allclose(ours[name].astype(np.float32), w, rtol=1e-3, atol=1e-4, err_msg=name)
    fid = record["fidelity"]
    # a random tiny model has near-tied logits (range under 2 over 320 tokens): the logit gap decides, and
    # top-1 may differ where two tokens are closer than float16 rounding of the weights moves them
    assert fid["top1_agreement"] >= 0.99 and fid["max_abs_logit_diff"] < 1e-2, fid
    for quant, min_top1, max_rel in (("q8_0", 0.95, 0.05), ("q4_0", 0.8, 0.25)):
        _, rec = import_gguf(files[quant], cache=cache)
        fid = rec["fidelity"]
        print(f"{arch_fixture} {quant}: {fid}")
        assert fid["top1_agreement"] >= min_top1, (quant, fid)
        assert fid["max_abs_logit_diff"] <= max_rel * fid["logit_range"], (quant, fid)
    # the tokenizer that training loads gives llama.cpp's ids (checked at import; checked here again)
    from selfguide_lite.engine.llama import gguf_tokenize as llama_tokenize
    from selfguide_lite.hf_tokenizer import load_tokenizer

    tok = load_tokenizer(imported)
    for text in ("Input: the team wins\nOutput: sports", "digits 12345 é"):
        assert tok(text)["input_ids"] == llama_tokenize(files["q8_0"], text)

    from selfguide_lite.export import convert_to_gguf
    from selfguide_lite.gguf_import import GGUFFile

    source, again = GGUFFile(files["f32"]), GGUFFile(convert_to_gguf(imported, tmp_path / "again.gguf", "f32"))
    assert set(again.tensors) == set(source.tensors)
    for name in source.tensors:
        np.testing.assert_allclose(again.tensor(name), source.tensor(name), rtol=1e-3, atol=1e-4, err_msg=name)
    for key in ("tokenizer.ggml.model", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.add_space_prefix",
                "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id"):
        assert again.get(key) == source.get(key), key
    for text in ("Input: the team wins\nOutput: sports", " two  spaces", "digits 12345 é"):
        assert llama_tokenize(again.path, text) == llama_tokenize(files["f32"], text)


@pytest.mark.slow
def test_import_is_cached_by_hash(tiny_llama, tmp_path):
    files = _gguf_variants(tiny_llama, tmp_path)
    first, rec1 = import_gguf(files["q8_0"], cache=tmp_path / "models")
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    again, rec2 = import_gguf(files["q8_0"], cache=tmp_path / "models")
    assert not rec1.pop("cached") and rec2.pop("cached")
    assert again == first and rec2 == rec1 and (first / "model.safetensors").stat().st_mtime_ns == stamp
    assert rec1["sha256"] in first.name or first.name.endswith(rec1["sha256"][:12])
    # Imported again elsewhere (another working directory's models/): the same checkpoint to every stage
    # key, although the import record (timings) differs. Several safetensors metadata keys used to come
    # out in hash-map order, which re-keyed every finished round after such a re-import.
    elsewhere, _ = import_gguf(files["q8_0"], cache=tmp_path / "other-models")
    assert file_hash(elsewhere / "model.safetensors") == file_hash(first / "model.safetensors")
    assert file_hash(elsewhere) == file_hash(first)


@pytest.mark.parametrize("kind", ["unsupported", "corrupt"])
def test_bad_gguf_is_one_error_line_and_leaves_nothing(kind, tmp_path):
    cache = tmp_path / "models"
    if kind == "unsupported":
        bad = small_gguf(tmp_path / "m.gguf", "mamba")
    else:
        bad = tmp_path / "m.gguf"
        bad.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x00" * 20)
    with pytest.raises(UserError) as err:
        import_gguf(bad, cache=cache)
    if kind == "unsupported":
        assert "mamba" in str(err.value) and "llama, qwen2" in str(err.value)
    out = run_cli("train", "--data", str(tmp_path / "none.jsonl"), "--model", str(bad), "--out", str(tmp_path / "a"),
                  env={**__import__("os").environ, "SELFGUIDE_MODELS_DIR": str(cache)})
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in out.stderr
    leftovers = list(cache.rglob("*")) if cache.exists() else []
    assert not [p for p in leftovers if p.is_file()], leftovers


# --- the built-in real student ------------------------------------------------------------------

def test_builtin_student_resolves_to_the_shipped_file():
    path = builtin_gguf("smollm2-135m-instruct")
    assert path.name == BUILTIN_STUDENTS["smollm2-135m-instruct"].filename and path.stat().st_size > 90_000_000
    with path.open("rb") as fh:
        assert fh.read(4) == b"GGUF"


@pytest.mark.parametrize("name", list(BUILTIN_STUDENTS))
def test_missing_builtin_package_says_how_to_install(name, monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda module: None)
    with pytest.raises(UserError, match=f"pip install {BUILTIN_STUDENTS[name].package}$"):
        builtin_gguf(name)


def test_an_assembled_builtin_student_comes_from_its_package(monkeypatch, tmp_path):
    """gemma3-270m's package writes the file with assemble(): its path is used; its failure is one line."""
    import importlib
    import importlib.util
    import types

    made = tmp_path / "gemma-3-270m-q4_k_m.gguf"
    made.write_bytes(b"GGUF")
    fake = types.SimpleNamespace(assemble=lambda: str(made))
    monkeypatch.setattr(importlib.util, "find_spec", lambda module: object())
    monkeypatch.setattr(importlib, "import_module", lambda module: fake)
    assert builtin_gguf("gemma3-270m") == made

    def broken():
        raise OSError("No space left on device\n  while writing chunk 3")

    fake.assemble = broken
    with pytest.raises(UserError) as err:
        builtin_gguf("gemma3-270m")
    assert "\n" not in str(err.value) and "No space left on device while writing chunk 3" in str(err.value)


def test_help_and_doctor_list_the_builtin_students():
    out = run_cli("loop", "--help")
    assert out.returncode == 0 and all(name in " ".join(out.stdout.split()) for name in BUILTIN_STUDENTS)
    for command in ("synth", "instruct", "eval", "chat", "serve", "train", "export"):  # model help renders everywhere
        shown = run_cli(command, "--help")
        assert shown.returncode == 0, (command, shown.stderr[-300:])
        assert "ollama:NAME" in " ".join(shown.stdout.split()), command
    doctor = run_cli("doctor")
    for name in BUILTIN_STUDENTS:
        assert f"built-in student {name}:" in doctor.stdout + doctor.stderr


@pytest.fixture(scope="session")
def smollm2_models(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.mark.slow
def test_builtin_student_imports_faithfully(smollm2_models):
    hf_dir, record = import_gguf(builtin_gguf("smollm2-135m-instruct"), cache=smollm2_models)
    config = json.loads((hf_dir / "config.json").read_text())
    assert config["num_hidden_layers"] == 30 and config["tie_word_embeddings"] is True
    fid = record["fidelity"]
    # Measured 96.6% / 2.86 on a 71-wide logit range: llama.cpp's Q4_1 matmuls quantize activations.
    assert fid["top1_agreement"] >= 0.9 and fid["max_abs_logit_diff"] < 0.1 * fid["logit_range"], fid


@pytest.mark.slow
def test_one_real_round_on_the_builtin_student(smollm2_models, tmp_path):
    """Round 0 samples the shipped GGUF itself; round 1 trains on the imported checkpoint, exports and
    evaluates; the manifest records the import's fidelity and both splits."""
    from selfguide_lite.demo import real_demo_task_path

    cfg = tmp_path / "c.yaml"
    # the vote named and no row or label minimum: this test checks the round's parts on a real student, whose
    # 12 candidates are far fewer than a round needs (the signal check still runs, on 6 validation instances)
    cfg.write_text("selfguide: {num_inputs: 12, wave_size: 12, num_samples: 3, length_filter: false, labeler: vote, "
                   "signal_size: 6}\n"
                   "train: {quantization: none, epochs: 1, batch_size: 4}\n"
                   "eval: {validation_size: 6, test_size: 6}\nexport: {quant: q8_0}\n"
                   "loop: {min_train_rows: 1, min_train_labels: 1}\n")
    env = {**__import__("os").environ, "SELFGUIDE_MODELS_DIR": str(smollm2_models)}
    out = run_cli("loop", "--task", str(real_demo_task_path()), "--model", "smollm2-135m-instruct", "--rounds", "1",
                  "--run-dir", str(tmp_path / "run"), "--config", str(cfg), cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("import fidelity") == 1
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["import"]["fidelity"]["positions"] > 0
    assert "round-0/export" not in manifest["stages"]  # round 0 is the shipped file itself
    assert manifest["rounds"]["0"]["gguf"] == str(builtin_gguf("smollm2-135m-instruct").resolve())
    for k in ("0", "1"):
        m = manifest["rounds"][k]["metrics"]
        assert m["validation"]["n"] == 6 and m["test"]["n"] == 6
    assert "validation" in out.stdout and "test" in out.stdout
    assert (tmp_path / "run" / "round-1" / "model-q8_0.gguf").is_file()
    # The same command from a machine (or working directory) that imports the student afresh finds the
    # run finished: no stage runs again.
    env["SELFGUIDE_MODELS_DIR"] = str(tmp_path / "models-elsewhere")
    again = run_cli("loop", "--task", str(real_demo_task_path()), "--model", "smollm2-135m-instruct", "--rounds", "1",
                    "--run-dir", str(tmp_path / "run"), "--config", str(cfg), cwd=tmp_path, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (tmp_path / "models-elsewhere" / "imported").is_dir()
    stages = json.loads((tmp_path / "run" / "manifest.json").read_text())["stages"]
    assert all(rec.get("skipped") for rec in stages.values()), {k: rec.get("skipped") for k, rec in stages.items()}


@pytest.mark.slow
@pytest.mark.parametrize("arch_fixture", ["tiny_llama3", "tiny_qwen3", "tiny_gemma3"])
def test_llama3_qwen3_and_gemma3_gguf_students_run_a_round_through_the_export_gate(arch_fixture, request, tmp_path):
    """A Llama 3.x file (RoPE frequency factors), a Qwen3 file (Q/K norms) and a Gemma 3 file (sliding
    window, +1 norms, SentencePiece vocabulary written back as tokenizer.model), given as GGUF students:
    import, synthesis, LoRA training, merge, conversion and quantization, and the export gate passes;
    the round's GGUF keeps the family's own tensors."""
    from selfguide_lite.export import convert_to_gguf, quantize_gguf
    from selfguide_lite.gguf_import import GGUFFile
    from selfguide_lite.toy_models.headline import headline_task_path

    hf_dir = request.getfixturevalue(arch_fixture)
    student = quantize_gguf(convert_to_gguf(hf_dir, tmp_path / "m-f32.gguf", "f32"), tmp_path / "m-q8_0.gguf", "q8_0")
    cfg = tmp_path / "c.yaml"
    # a random model writes noise: keep every candidate, this checks the plumbing of the family
    cfg.write_text("selfguide: {num_inputs: 24, wave_size: 12, num_samples: 4, length_filter: false, balance: false, "
                   "input_filters: false, labeler: vote, signal_size: 8}\n"
                   "train: {quantization: none, epochs: 1, batch_size: 4, learning_rate: 1.0e-3}\n"
                   "eval: {validation_size: 8, test_size: 4}\nengine: {n_ctx: 2048}\nexport: {quant: q8_0}\n"
                   "loop: {min_train_rows: 1, min_train_labels: 1}\n")
    run_dir = tmp_path / "run"
    out = run_cli("loop", "--task", str(headline_task_path()), "--model", str(student), "--rounds", "1", "--run-dir",
                  str(run_dir), "--config", str(cfg), cwd=tmp_path,
                  env={**__import__("os").environ, "SELFGUIDE_MODELS_DIR": str(tmp_path / "models")})
    assert out.returncode == 0, out.stderr[-2000:]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    round1 = manifest["rounds"]["1"]
    assert round1["train_size"] > 0 and round1["gate"]["passed"], round1.get("gate")
    trained = GGUFFile(run_dir / "round-1" / "model-q8_0.gguf")
    source = GGUFFile(student)
    assert trained.architecture == source.architecture
    family_tensors = {"tiny_llama3": "rope_freqs.weight", "tiny_qwen3": "blk.0.attn_q_norm.weight",
                      "tiny_gemma3": "blk.0.post_ffw_norm.weight"}[arch_fixture]
    assert family_tensors in trained.tensors
    if arch_fixture == "tiny_llama3":
        np.testing.assert_allclose(trained.tensor("rope_freqs.weight"), source.tensor("rope_freqs.weight"), rtol=1e-6)
    # these files have no chat template: the report says the prompts were plain text
    assert "prompts: plain text" in (run_dir / "report.html").read_text()


def test_llama3_rope_scaling_is_recovered_from_the_factors_or_refused():
    """The GGUF keeps only rope_freqs; the parameters that reproduce them are found (Meta's usual ones,
    or solved from the smoothed band), and factors no llama3 scaling gives are refused."""
    from selfguide_lite.gguf_import import llama3_rope_factors, llama3_rope_scaling

    usual = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    for params in (usual, {"factor": 16.0, "low_freq_factor": 1.0, "high_freq_factor": 6.0,
                           "original_max_position_embeddings": 4096}):
        factors = llama3_rope_factors(params, 500000.0, 128)
        got = llama3_rope_scaling(factors.astype(np.float32), 500000.0, 128, where="f")
        assert got == {"rope_type": "llama3", **params}, got
    # same ratios, other numbers: the same model, so an equivalent set is fine if it reproduces the factors
    odd = llama3_rope_factors({"factor": 8.0, "low_freq_factor": 2.0, "high_freq_factor": 8.0,
                               "original_max_position_embeddings": 16384}, 500000.0, 128)
    got = llama3_rope_scaling(odd, 500000.0, 128, where="f")
    np.testing.assert_allclose(llama3_rope_factors(got, 500000.0, 128), odd, rtol=1e-6)
    bumpy = llama3_rope_factors(usual, 500000.0, 128)
    bumpy[5] = 3.0  # a factor in the unscaled band: no llama3 scaling does that
    with pytest.raises(UserError, match="llama3 RoPE scaling"):
        llama3_rope_scaling(bumpy, 500000.0, 128, where="f")
    with pytest.raises(UserError, match="do not look like"):
        llama3_rope_scaling(np.ones(10), 500000.0, 128, where="f")


def test_converter_hints_carry_user_defined_tokens_and_the_space_rule(tmp_path):
    """llama.cpp's converter takes user-defined tokens (Gemma's whitespace runs) and a Llama's leading-space
    rule from tokenizer_config.json, not from tokenizer.model: the import writes both there."""
    import gguf

    from selfguide_lite.gguf_import import GGUFFile, _converter_hints

    path = tmp_path / "v.gguf"
    w = gguf.GGUFWriter(str(path), "gemma3")
    w.add_tokenizer_model("llama")
    w.add_token_list(["<pad>", "<eos>", "<bos>", "<unk>", "  ", "\n\n", "▁a"])
    w.add_token_types([3, 3, 3, 2, 4, 4, 1])
    w.add_token_scores([0.0] * 7)
    w.add_add_space_prefix(False)
    w.add_tensor("token_embd.weight", np.zeros((7, 4), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    config = tmp_path / "tokenizer_config.json"
    config.write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"}))
    _converter_hints(GGUFFile(path), config)
    written = json.loads(config.read_text())
    assert written["add_prefix_space"] is False and written["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert {k: v["content"] for k, v in written["added_tokens_decoder"].items()} == {"4": "  ", "5": "\n\n"}
    assert not any(v["special"] for v in written["added_tokens_decoder"].values())
