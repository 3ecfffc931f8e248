"""Models the user already has: `ollama:` and `lmstudio:` names resolved in stores laid out exactly as
Ollama and LM Studio lay them out, the `models` listing, and their error lines."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from selfguide_lite.errors import UserError
from selfguide_lite.local_models import (
    OLLAMA_MODEL_LAYER,
    list_lmstudio,
    list_ollama,
    lmstudio_stores,
    resolve_lmstudio,
    resolve_ollama,
)
from selfguide_lite.models import sampling_gguf
from selfguide_lite.runs import ollama_model_name
from tests.helpers import small_gguf


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("OLLAMA_MODELS", raising=False)
    (tmp_path / "home").mkdir()
    return tmp_path / "home"


def _blob(store: Path, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    (store / "blobs").mkdir(parents=True, exist_ok=True)
    (store / "blobs" / f"sha256-{digest}").write_bytes(data)
    return f"sha256:{digest}"


def ollama_pull(store: Path, registry: str, namespace: str, model: str, tag: str, gguf_bytes: bytes,
                template: str = "{{ .Prompt }}", **other_layers: bytes) -> Path:
    """What `ollama pull` (or `ollama create`) leaves: the GGUF as a blob named by its digest, a template
    blob (Ollama's default `{{ .Prompt }}` unless given), any other layers (`adapter=`, `projector=`,
    `system=`: their bytes), a config blob, the manifest."""
    config = b'{"model_format":"gguf"}'
    layers = [("model", gguf_bytes), ("template", template.encode()), *other_layers.items()]
    manifest = store / "manifests" / registry / namespace / model / tag
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_text(json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": _blob(store, config),
                   "size": len(config)},
        "layers": [{"mediaType": f"application/vnd.ollama.image.{kind}", "digest": _blob(store, data), "size": len(data)}
                   for kind, data in layers],
    }))
    return store / "blobs" / _blob(store, gguf_bytes).replace(":", "-")


def test_ollama_names_resolve_to_the_model_blob(home, tmp_path):
    store = home / ".ollama" / "models"
    data = small_gguf(tmp_path / "m.gguf").read_bytes()
    plain = ollama_pull(store, "registry.ollama.ai", "library", "llama3.2", "1b", data)
    latest = ollama_pull(store, "registry.ollama.ai", "library", "smollm2", "latest", data + b"\0")
    user = ollama_pull(store, "registry.ollama.ai", "someone", "tiny", "q8", data + b"\0\0")
    other = ollama_pull(store, "hf.co", "org", "model-gguf", "Q4_K_M", data + b"\0\0\0")
    assert resolve_ollama("llama3.2:1b") == plain
    assert resolve_ollama("smollm2") == latest  # tag latest by default
    assert resolve_ollama("someone/tiny:q8") == user
    assert resolve_ollama("hf.co/org/model-gguf:Q4_K_M") == other
    assert sampling_gguf("ollama:llama3.2:1b") == plain
    names = sorted(m.name for m in list_ollama())
    assert names == ["ollama:hf.co/org/model-gguf:Q4_K_M", "ollama:llama3.2:1b", "ollama:smollm2:latest",
                     "ollama:someone/tiny:q8"]
    with pytest.raises(UserError) as err:
        resolve_ollama("llama3.2:3b")
    assert "ollama:llama3.2:1b" in str(err.value) and "ollama:someone/tiny:q8" in str(err.value)


def test_ollama_store_locations_and_broken_stores(home, tmp_path, monkeypatch):
    data = small_gguf(tmp_path / "m.gguf").read_bytes()
    service = tmp_path / "elsewhere"
    blob = ollama_pull(service, "registry.ollama.ai", "library", "qwen3", "0.6b", data)
    monkeypatch.setenv("OLLAMA_MODELS", str(service))
    assert resolve_ollama("qwen3:0.6b") == blob
    # an unreadable manifest and a missing blob: one line naming the file
    manifest = service / "manifests" / "registry.ollama.ai" / "library" / "qwen3" / "0.6b"
    blob.unlink()
    with pytest.raises(UserError, match=f"{blob}.*missing"):
        resolve_ollama("qwen3:0.6b")
    manifest.write_text("{not json")
    with pytest.raises(UserError, match=f"{manifest}: not a readable Ollama manifest"):
        resolve_ollama("qwen3:0.6b")
    assert [m.problem != "" for m in list_ollama()] == [True]


def test_one_malformed_manifest_is_reported_and_the_rest_still_work(home, tmp_path, capsys):
    """Manifests whose JSON parses but has the wrong shape (issue 42): `layers` not objects, a model layer
    without a digest. Each is listed as unreadable, naming it; good models resolve; a name that is not there
    is still the not-found line; the CLI ends in one `error:` line for the bad name itself."""
    store = home / ".ollama" / "models"
    data = small_gguf(tmp_path / "m.gguf").read_bytes()
    good = ollama_pull(store, "registry.ollama.ai", "library", "good", "latest", data)
    strings = ollama_pull(store, "registry.ollama.ai", "library", "strings", "latest", data + b"\0")
    no_digest = ollama_pull(store, "registry.ollama.ai", "library", "nodigest", "latest", data + b"\0\0")
    manifests = store / "manifests" / "registry.ollama.ai" / "library"
    (manifests / "strings" / "latest").write_text(json.dumps({"layers": ["sha256:abc"]}))
    (manifests / "nodigest" / "latest").write_text(json.dumps({"layers": [{"mediaType": OLLAMA_MODEL_LAYER}]}))
    assert strings.is_file() and no_digest.is_file()
    listed = {m.name: m for m in list_ollama()}
    assert listed["ollama:good:latest"].path == good
    assert "'layers' is not a list of objects" in listed["ollama:strings:latest"].problem
    assert "has no digest" in listed["ollama:nodigest:latest"].problem
    assert resolve_ollama("good") == good
    with pytest.raises(UserError, match="not found") as err:
        resolve_ollama("absent")
    assert "ollama:good:latest" in str(err.value)
    from selfguide_lite.cli import main

    assert main(["chat", "ollama:strings"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "not a readable Ollama manifest" in lines[0]
    out = run_cli("models", env={**os.environ, "HOME": str(home)})
    assert out.returncode == 0 and "ollama:strings:latest" in out.stdout, out.stderr


def test_lmstudio_names_skip_projectors_and_refuse_ambiguity(home, tmp_path):
    models = home / ".lmstudio" / "models"
    q4 = small_gguf(models / "lmstudio-community" / "gemma-3-270m-it-GGUF" / "gemma-3-270m-it-Q4_K_M.gguf")
    q8 = small_gguf(models / "lmstudio-community" / "gemma-3-270m-it-GGUF" / "gemma-3-270m-it-Q8_0.gguf")
    small_gguf(models / "lmstudio-community" / "gemma-3-270m-it-GGUF" / "mmproj-model-f16.gguf")
    only = small_gguf(models / "someone" / "tiny" / "tiny-Q8_0.gguf")
    small_gguf(models / "someone" / "tiny" / "mmproj-tiny-f16.gguf")
    assert resolve_lmstudio("someone/tiny") == only  # the projector is never a candidate
    assert resolve_lmstudio("lmstudio-community/gemma-3-270m-it-GGUF/gemma-3-270m-it-Q8_0.gguf") == q8
    with pytest.raises(UserError) as err:
        resolve_lmstudio("lmstudio-community/gemma-3-270m-it-GGUF")
    assert q4.name in str(err.value) and q8.name in str(err.value) and "mmproj" not in str(err.value)
    with pytest.raises(UserError, match="vision projector"):
        resolve_lmstudio("someone/tiny/mmproj-tiny-f16.gguf")
    with pytest.raises(UserError, match="lmstudio:someone/tiny/tiny-Q8_0.gguf"):
        resolve_lmstudio("someone/other")
    assert sorted(m.name for m in list_lmstudio()) == [
        "lmstudio:lmstudio-community/gemma-3-270m-it-GGUF/gemma-3-270m-it-Q4_K_M.gguf",
        "lmstudio:lmstudio-community/gemma-3-270m-it-GGUF/gemma-3-270m-it-Q8_0.gguf",
        "lmstudio:someone/tiny/tiny-Q8_0.gguf"]


def test_lmstudio_folders_moved_by_settings_pointer_or_left_in_the_old_place(home, tmp_path):
    old = small_gguf(home / ".cache" / "lm-studio" / "models" / "pub" / "old" / "old.gguf")
    assert resolve_lmstudio("pub/old") == old
    custom = tmp_path / "disk2" / "lm-models"
    moved = small_gguf(custom / "pub" / "new" / "new.gguf")
    (home / ".lmstudio").mkdir()
    (home / ".lmstudio" / "settings.json").write_text(json.dumps({"downloadsFolder": str(custom)}))
    assert lmstudio_stores()[0] == custom and resolve_lmstudio("pub/new") == moved
    relocated = tmp_path / "lmhome"
    (relocated / "models" / "pub" / "far").mkdir(parents=True)
    far = small_gguf(relocated / "models" / "pub" / "far" / "far.gguf")
    (home / ".lmstudio-home-pointer").write_text(str(relocated) + "\n")
    assert resolve_lmstudio("pub/far") == far


def test_ollama_model_name_is_one_ollama_accepts():
    assert ollama_model_name("Task738 Perspectrum/run #2") == "selfguide-task738-perspectrum-run-2"
    assert ollama_model_name("___") == "selfguide-student"


def run_cli(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "selfguide_lite", *args], capture_output=True, text=True, env=env,
                          timeout=600)


def test_models_command_lists_what_can_be_a_student_and_names_fail_in_one_line(home, tmp_path, tiny_llama):
    from selfguide_lite.export import convert_to_gguf

    student = convert_to_gguf(tiny_llama, tmp_path / "tiny.gguf", "q8_0")
    ollama_pull(home / ".ollama" / "models", "registry.ollama.ai", "library", "tiny", "latest", student.read_bytes())
    small_gguf(home / ".lmstudio" / "models" / "pub" / "ssm" / "ssm-f32.gguf", arch="mamba")
    env = {**os.environ, "HOME": str(home)}
    env.pop("OLLAMA_MODELS", None)
    out = run_cli("models", env=env)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    tiny = next(line for line in lines if line.strip().startswith("ollama:tiny:latest"))
    assert "llama" in tiny and "Q8_0" in tiny and "can be a student" in tiny
    ssm = next(line for line in lines if "lmstudio:pub/ssm/ssm-f32.gguf" in line)
    assert "mamba" in ssm and "not a student here" in ssm
    assert any(line.strip().startswith("smollm2-135m-instruct:") for line in lines)
    from selfguide_lite.toy_models.headline import headline_task_path

    for args in (("eval", "--task", str(headline_task_path()), "--model", "ollama:nope"), ("chat", "ollama:nope"),
                 ("loop", "--task", str(headline_task_path()), "--model", "lmstudio:pub/none", "--run-dir",
                  str(tmp_path / "run"))):
        bad = run_cli(*args, env=env)
        err = bad.stderr.strip().splitlines()
        assert bad.returncode == 2 and len(err) == 1 and err[0].startswith("error:"), (args, bad.stderr)
        assert ("ollama:tiny:latest" if "ollama:nope" in args else "lmstudio:pub/ssm/ssm-f32.gguf") in err[0]


# --- issue 42: stores that cannot be read, layers Ollama applies around the GGUF, vision towers, splits ----

CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
OLLAMA_CHATML = ("{{- if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
                 "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n")


def chat_gguf(path: Path, chat_template: str | None = CHATML) -> Path:
    """A GGUF whose metadata is a chat model's (ChatML control tokens in its vocabulary, its own Jinja chat
    template): what the TEMPLATE check reads."""
    import gguf
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(["<unk>", "<|im_start|>", "<|im_end|>", "[INST]", "hello"])
    w.add_token_types([2, 3, 3, 3, 1])
    if chat_template:
        w.add_chat_template(chat_template)
    w.add_tensor("token_embd.weight", np.zeros((5, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_a_store_that_exists_but_cannot_be_read_is_said_so(home, tmp_path, monkeypatch):
    """Tests run as root, whom permissions do not stop: the refusal the kernel gives another user is made
    here by the listing call itself (os.scandir raising PermissionError inside the store)."""
    import selfguide_lite.local_models as local_models
    from selfguide_lite.models import student_listing

    service = tmp_path / "usr-share-ollama"
    ollama_pull(service, "registry.ollama.ai", "library", "qwen3", "0.6b", small_gguf(tmp_path / "m.gguf").read_bytes())
    small_gguf(home / ".lmstudio" / "models" / "pub" / "m" / "m.gguf")
    monkeypatch.setenv("OLLAMA_MODELS", str(service))
    real_scandir = os.scandir
    locked = (str(service), str(home / ".lmstudio" / "models"))

    def scandir(path="."):
        if str(path).startswith(locked):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(local_models.os, "scandir", scandir)
    with pytest.raises(UserError, match=f"cannot read {service} \\(Permission denied\\).*OLLAMA_MODELS"):
        resolve_ollama("qwen3:0.6b")
    with pytest.raises(UserError, match="cannot read .*lmstudio.*Permission denied"):
        resolve_lmstudio("pub/m")
    listing = "\n".join(student_listing())
    assert f"cannot read {service} (Permission denied)" in listing and "not found" not in listing
    monkeypatch.setattr(local_models.os, "scandir", real_scandir)
    assert resolve_ollama("qwen3:0.6b").is_file() and resolve_lmstudio("pub/m").is_file()


def test_layers_ollama_applies_around_the_gguf_are_refused_or_said(home, tmp_path):
    """An ADAPTER layer: Ollama runs base + adapter, so the base alone is refused. A TEMPLATE: a library
    model's (the GGUF's own markers) is accepted; one writing other markers, or none over a chat GGUF, or
    markers over a GGUF without a chat template is refused with what it writes. A projector layer
    (LLaVA-style) and a SYSTEM prompt are listed as not used."""
    store = home / ".ollama" / "models"
    chat = chat_gguf(tmp_path / "chat.gguf").read_bytes()
    plain = chat_gguf(tmp_path / "plain.gguf", chat_template=None).read_bytes()
    good = ollama_pull(store, "registry.ollama.ai", "library", "qwen", "chat", chat, template=OLLAMA_CHATML)
    ollama_pull(store, "registry.ollama.ai", "library", "qwen", "lora", chat, template=OLLAMA_CHATML,
                adapter=b"GGUF-lora-bytes")
    ollama_pull(store, "registry.ollama.ai", "someone", "alpaca", "latest", chat,
                template="### Instruction:\n{{ .Prompt }}\n\n### Response:\n")
    ollama_pull(store, "registry.ollama.ai", "someone", "mistralish", "latest", chat,
                template="[INST] {{ .Prompt }} [/INST]")
    ollama_pull(store, "registry.ollama.ai", "someone", "base", "latest", plain, template=OLLAMA_CHATML)
    raw = ollama_pull(store, "registry.ollama.ai", "someone", "base", "raw", plain)
    llava = ollama_pull(store, "registry.ollama.ai", "library", "llava", "latest", chat, template=OLLAMA_CHATML,
                        projector=b"GGUF-clip", system=b"You are a helpful assistant.")
    assert resolve_ollama("qwen:chat") == good and resolve_ollama("someone/base:raw") == raw
    assert resolve_ollama("llava") == llava
    with pytest.raises(UserError, match="applies a LoRA adapter.*llama-export-lora"):
        resolve_ollama("qwen:lora")
    with pytest.raises(UserError, match="own TEMPLATE \\(it writes none of the turn markers.*<\\|im_start\\|>"):
        resolve_ollama("someone/alpaca")
    with pytest.raises(UserError, match="own TEMPLATE \\(it writes \\[INST\\], which the GGUF's own template never"):
        resolve_ollama("someone/mistralish")
    with pytest.raises(UserError, match="the GGUF has no chat template"):
        resolve_ollama("someone/base")
    listed = {m.name: m for m in list_ollama()}
    assert listed["ollama:qwen:lora"].path is None and "LoRA adapter" in listed["ollama:qwen:lora"].problem
    assert listed["ollama:llava:latest"].notes == ("its vision projector is not used (text only)",
                                                   "its SYSTEM prompt is not used")
    from selfguide_lite.cli import main

    assert main(["chat", "ollama:qwen:lora"]) == 2


def _with_vision_tower(text_gguf: Path, dest: Path) -> Path:
    """The GGUF as Ollama keeps Gemma 3 4B and larger: the language model's tensors and metadata, plus a
    vision tower (`v.*`), its projector (`mm.*`) and `gemma3.vision.*` keys, in one file."""
    import gguf
    import numpy as np

    from selfguide_lite.gguf_import import GGUFFile

    f = GGUFFile(text_gguf)
    w = gguf.GGUFWriter(str(dest), f.architecture)
    for key, field in f.reader.fields.items():
        if not key.startswith("GGUF.") and key != "general.architecture":
            kind = field.types[0]
            w.add_key_value(key, field.contents(), kind, sub_type=field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None)
    w.add_uint32(f"{f.architecture}.vision.block_count", 1)
    tower = {"v.patch_embd.weight": np.ones((16, 12), np.float32), "v.blk.0.attn_q.weight": np.ones((16, 16), np.float32),
             "mm.mm_input_projection.weight": np.ones((16, 16), np.float32)}
    for t in f.reader.tensors:
        w.add_tensor_info(t.name, t.data.shape, t.data.dtype, t.data.nbytes, t.tensor_type)
    for name, array in tower.items():
        w.add_tensor_info(name, array.shape, array.dtype, array.nbytes)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for t in f.reader.tensors:
        w.write_tensor_data(t.data)
    for array in tower.values():
        w.write_tensor_data(array)
    w.close()
    return dest


def _logits(path: Path, text: bytes):
    import numpy as np

    from selfguide_lite.engine.llama import load_llama

    model = load_llama(path, 64, 2, logits_all=True)
    tokens = model.tokenize(text)
    model.eval(tokens)
    scores = np.array(model.scores[:len(tokens)])
    model.close()
    return scores


def test_a_vision_tower_in_the_blob_is_set_aside_and_the_language_model_is_the_student(home, tmp_path, tiny_gemma3,
                                                                                     monkeypatch):
    """llama.cpp refuses the combined file (`wrong number of tensors`); the listing says what is there and
    `ollama:` resolves to the language model written apart once (cached), whose logits are the text GGUF's."""
    import numpy as np

    from selfguide_lite.engine.llama import load_llama
    from selfguide_lite.export import convert_to_gguf
    from selfguide_lite.models import student_listing

    monkeypatch.setenv("SELFGUIDE_MODELS_DIR", str(tmp_path / "models"))
    text = convert_to_gguf(tiny_gemma3, tmp_path / "text.gguf", "q8_0")
    both = _with_vision_tower(text, tmp_path / "both.gguf")
    with pytest.raises(UserError, match="wrong number of tensors"):
        load_llama(both, 64, 2)
    ollama_pull(home / ".ollama" / "models", "registry.ollama.ai", "library", "gemma3", "4b", both.read_bytes())
    line = next(line for line in student_listing() if "ollama:gemma3:4b" in line)
    assert "gemma3" in line and "vision tower" in line and "not used" in line and "can be a student" in line
    student = sampling_gguf("ollama:gemma3:4b")
    assert student.parent == tmp_path / "models" / "text-only" and student.stat().st_size < both.stat().st_size
    made = student.stat().st_mtime_ns
    assert sampling_gguf("ollama:gemma3:4b") == student and student.stat().st_mtime_ns == made  # written once
    assert not list(student.parent.glob("*.part"))
    np.testing.assert_array_equal(_logits(student, b"the cat sat"), _logits(text, b"the cat sat"))


def test_lmstudio_split_models_and_quantization_subfolders(home, tmp_path, tiny_llama, monkeypatch, capsys):
    """A repository with one folder per quantization, one of them split by gguf-split's naming: listed once
    per model (the first shard), found in subfolders, named by subfolder or by any shard; llama.cpp samples
    the split; the importer reads tensors from every shard; a missing shard is one line."""
    import gguf
    import numpy as np

    from selfguide_lite.export import convert_to_gguf
    from selfguide_lite.gguf_import import GGUFFile
    from selfguide_lite.models import import_gguf

    monkeypatch.setenv("SELFGUIDE_MODELS_DIR", str(tmp_path / "models"))
    whole = convert_to_gguf(tiny_llama, tmp_path / "whole.gguf", "q8_0")
    folder = home / ".lmstudio" / "models" / "pub" / "tiny-GGUF"
    (folder / "Q8_0").mkdir(parents=True)
    f = GGUFFile(whole)
    w = gguf.GGUFWriter(str(folder / "Q8_0" / "tiny-Q8_0.gguf"), f.architecture, split_max_tensors=len(f.tensors) // 2 + 1)
    for key, field in f.reader.fields.items():
        if not key.startswith("GGUF.") and key != "general.architecture":
            kind = field.types[0]
            w.add_key_value(key, field.contents(), kind, sub_type=field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None)
    for t in f.reader.tensors:
        w.add_tensor(t.name, t.data, raw_shape=t.data.shape, raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    first, second = folder / "Q8_0" / "tiny-Q8_0-00001-of-00002.gguf", folder / "Q8_0" / "tiny-Q8_0-00002-of-00002.gguf"
    assert first.is_file() and second.is_file()
    f16 = folder / "F16" / "tiny-F16.gguf"
    f16.parent.mkdir()
    f16.write_bytes(whole.read_bytes())
    assert sorted(m.name for m in list_lmstudio()) == ["lmstudio:pub/tiny-GGUF/F16/tiny-F16.gguf",
                                                       "lmstudio:pub/tiny-GGUF/Q8_0/tiny-Q8_0-00001-of-00002.gguf"]
    assert resolve_lmstudio("pub/tiny-GGUF/Q8_0") == first
    assert resolve_lmstudio("pub/tiny-GGUF/Q8_0/tiny-Q8_0-00002-of-00002.gguf") == first
    assert resolve_lmstudio("pub/tiny-GGUF/F16/tiny-F16.gguf") == f16
    with pytest.raises(UserError, match="has 2 models; name one: .*F16/tiny-F16.gguf.*Q8_0/tiny-Q8_0-00001-of-00002"):
        resolve_lmstudio("pub/tiny-GGUF")
    np.testing.assert_array_equal(_logits(first, b"the cat"), _logits(whole, b"the cat"))
    hf_dir, record = import_gguf(sampling_gguf("lmstudio:pub/tiny-GGUF/Q8_0"))
    whole_dir, whole_record = import_gguf(whole)
    assert hf_dir != whole_dir and record["fidelity"] == whole_record["fidelity"]
    weights = sorted(p.name for p in whole_dir.glob("*.safetensors"))
    assert weights and weights == sorted(p.name for p in hf_dir.glob("*.safetensors"))
    assert all((hf_dir / name).read_bytes() == (whole_dir / name).read_bytes() for name in weights)
    second.unlink()
    from selfguide_lite.cli import main
    from selfguide_lite.models import student_listing

    assert main(["chat", "lmstudio:pub/tiny-GGUF/Q8_0"]) == 2
    said = capsys.readouterr().err
    err = [line for line in said.splitlines() if line.startswith("error")]
    assert len(err) == 1 and "other shards are missing: tiny-Q8_0-00002-of-00002.gguf" in err[0] and "Traceback" not in said
    line = next(line for line in student_listing() if "Q8_0/tiny-Q8_0-00001-of-00002.gguf" in line)
    assert "shard tiny-Q8_0-00002-of-00002.gguf of this split model is missing" in line
