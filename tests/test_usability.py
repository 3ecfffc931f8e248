"""Configuration, progress, the report in a real browser, and using the result (Modelfile, chat, serve)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from selfguide_lite import progress
from selfguide_lite.config import Config, annotated_yaml, load_config
from selfguide_lite.errors import UserError

CHROMIUM = Path("/usr/bin/chromium")


# --- configuration -------------------------------------------------------------------------------

def test_printed_defaults_round_trip_and_explain_every_setting():
    text = annotated_yaml()
    assert Config.model_validate(yaml.safe_load(text)) == Config()
    settings = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert len(settings) > 60 and all("# " in line for line in settings)  # each with its explanation


def test_file_and_flags_override_the_defaults(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("selfguide: {num_inputs: 50, vote_threshold: 0.5}\ntrain: {epochs: 1}\n")
    loaded = load_config(cfg, {"selfguide": {"num_inputs": 7}, "train": {"epochs": None}})
    assert loaded.selfguide.num_inputs == 7  # flag beats file
    assert loaded.selfguide.vote_threshold == 0.5  # file beats default
    assert loaded.train.epochs == 1  # an unset flag leaves the file's value
    assert loaded.selfguide.num_samples == Config().selfguide.num_samples


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("selfguide:\n  num_input: 3\n", "unknown setting 'selfguide.num_input'; did you mean 'selfguide.num_inputs'?"),
        ("trian:\n  epochs: 1\n", "unknown setting 'trian'; did you mean 'train'?"),
        ("train:\n  learning_rat: 0.1\n", "did you mean 'train.learning_rate'?"),
    ],
)
def test_unknown_key_names_the_closest_valid_one(tmp_path, content, message):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(content)
    with pytest.raises(UserError) as err:
        load_config(cfg)
    assert message in str(err.value) and "c.yaml" in str(err.value)


def test_config_print_command():
    res = subprocess.run([sys.executable, "-m", "selfguide_lite", "config", "--print"], capture_output=True, text=True)
    assert res.returncode == 0
    assert Config.model_validate(yaml.safe_load(res.stdout)) == Config()
    assert "num_samples: 10" in res.stdout and "self-consistency vote" in res.stdout


# --- progress ------------------------------------------------------------------------------------

def test_plain_progress_prints_heartbeats_with_rate_and_eta(monkeypatch, capsys):
    clock = {"t": 0.0}
    monkeypatch.setattr(progress.time, "monotonic", lambda: clock["t"])
    progress.set_mode("plain")
    try:
        with progress.bar("annotating", 100, "samples", samples=True) as bar:
            with progress.bar("inner manual bar", 5, "steps"):
                for _ in range(50):
                    clock["t"] += 0.2
                    progress.sample_done()  # skips the manual bar, reaches the samples bar
            assert bar.done == 50
        lines = capsys.readouterr().err.splitlines()
    finally:
        progress.set_mode("auto")
    assert lines, "no heartbeat in 10 s of work"
    assert all(line.startswith("  annotating: ") for line in lines)
    assert "/100 samples (5.0/s, eta " in lines[0]


def test_quiet_mode_prints_summaries_only(capsys):
    progress.set_mode("quiet")
    try:
        with progress.bar("x", 10, "things", samples=True):
            progress.sample_done(10)
        progress.summary("x: 10 done")
    finally:
        progress.set_mode("auto")
    assert capsys.readouterr().err == "  x: 10 done\n"


# --- report in a real browser --------------------------------------------------------------------

@pytest.mark.slow
def test_report_renders_in_headless_chromium_with_every_section(reference, tmp_path):
    from playwright.sync_api import sync_playwright

    assert CHROMIUM.is_file(), "Debian's chromium is needed for this test (.ci/run installs it)"
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    (run / "report.html").unlink()
    res = subprocess.run([sys.executable, "-m", "selfguide_lite", "report", str(run)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    page_html = (run / "report.html").read_text()
    assert "http://" not in page_html and "https://" not in page_html  # no network assets
    for section in ("scores", "funnel", "balance", "examples", "time", "config"):
        assert f'id="{section}"' in page_html, section
    assert "selfguide_lite loop --task" in page_html  # the exact command
    assert "vote_threshold: 0.3" in page_html  # the configuration
    assert "round-1/model-q8_0.gguf" in page_html or "diverged" in page_html or "no_data" in page_html

    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto((run / "report.html").as_uri())
        sizes = page.evaluate("[...document.images].map(i => [i.naturalWidth, i.naturalHeight, i.complete])")
        headings = page.evaluate("[...document.querySelectorAll('h2')].map(h => h.textContent)")
        page.screenshot(path=str(run / "report.png"), full_page=True)
        browser.close()
    assert errors == []
    assert len(sizes) >= 4 and all(w > 100 and h > 100 and ok for w, h, ok in sizes), sizes
    assert headings == ["Scores per round", "Data funnel", "Class balance", "Examples kept and dropped",
                        "Disk per round", "Time per stage", "Command and configuration"]
    assert (run / "report.png").stat().st_size > 10_000
    print(f"screenshot: {run / 'report.png'}")


# --- using the result ----------------------------------------------------------------------------

@pytest.mark.slow
def test_modelfile_uses_the_models_chat_template_and_stops(tmp_path):
    from selfguide_lite.export import gguf_from_hf
    from selfguide_lite.toy_models.tiny import build_tiny_model
    from tests.helpers import CORPUS

    template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    hf = tmp_path / "hf"
    build_tiny_model(hf, CORPUS, arch="qwen2", vocab_size=320, seed=4, chat_template=template)
    from selfguide_lite.usage import write_modelfile

    gguf = gguf_from_hf(hf, tmp_path / "m.gguf", "q8_0")
    assert not gguf.with_suffix(".Modelfile").exists()  # conversion alone writes no Modelfile: the loop's step does
    text = write_modelfile(gguf).read_text()
    assert "FROM ./m.gguf" in text
    assert 'TEMPLATE """<|im_start|>user\n{{ .Prompt }}<|im_end|>\n<|im_start|>assistant\n"""' in text
    assert "PARAMETER stop" in text


@pytest.mark.slow
def test_chat_answers_each_line(reference):
    gguf = reference / "round-1" / "model-q8_0.gguf"
    assert gguf.with_suffix(".Modelfile").is_file()  # export wrote it beside the GGUF
    prompt = ("Read the news headline and say what it is about. Answer with one word: sports, weather or food."
              "\\n\\nInput: Heavy rain floods the city\\nOutput:")
    res = subprocess.run([sys.executable, "-m", "selfguide_lite", "chat", str(gguf)], input=f"{prompt}\n{prompt}\n/exit\n",
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    answers = [line.removeprefix("> ").strip() for line in res.stdout.splitlines()[1:]]
    answers = [a for a in answers if a]
    assert len(answers) == 2 and answers[0] == answers[1]  # greedy: the same prompt, the same answer


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_serve_answers_an_openai_completion_request_and_stops_cleanly(reference):
    gguf = reference / "round-1" / "model-q8_0.gguf"
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "selfguide_lite", "serve", str(gguf), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{base}/models", timeout=2) as r:
                    models = json.load(r)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"server did not come up: {proc.stderr.read() if proc.poll() is not None else 'timeout'}")
                time.sleep(0.3)
        assert models["data"][0]["id"] == "model-q8_0"
        body = json.dumps({"model": "model-q8_0", "prompt": "Input: Heavy rain floods the city\nOutput:",
                           "max_tokens": 4, "temperature": 0}).encode()
        req = urllib.request.Request(f"{base}/completions", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            answer = json.load(r)
        assert answer["object"] == "text_completion"
        assert answer["usage"]["completion_tokens"] >= 1 and isinstance(answer["choices"][0]["text"], str)
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "server stopped" in out and "Traceback" not in err
