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


def ollama_pull(store: Path, registry: str, namespace: str, model: str, tag: str, gguf_bytes: bytes) -> Path:
    """What `ollama pull` leaves: the GGUF as a blob named by its digest, a config blob, the manifest."""
    digest = hashlib.sha256(gguf_bytes).hexdigest()
    (store / "blobs").mkdir(parents=True, exist_ok=True)
    (store / "blobs" / f"sha256-{digest}").write_bytes(gguf_bytes)
    config = b'{"model_format":"gguf"}'
    config_digest = hashlib.sha256(config).hexdigest()
    (store / "blobs" / f"sha256-{config_digest}").write_bytes(config)
    manifest = store / "manifests" / registry / namespace / model / tag
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_text(json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": f"sha256:{config_digest}",
                   "size": len(config)},
        "layers": [{"mediaType": "application/vnd.ollama.image.template", "digest": f"sha256:{config_digest}", "size": 1},
                   {"mediaType": OLLAMA_MODEL_LAYER, "digest": f"sha256:{digest}", "size": len(gguf_bytes)}],
    }))
    return store / "blobs" / f"sha256-{digest}"


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
