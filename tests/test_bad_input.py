"""Every user mistake: exit code 2, one line `error: ...` naming the file/field and what was expected,
no traceback, and no half-written output left behind."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from selfguide_lite.cli import main

GOOD_TASK = "instruction: Say the topic.\nexamples:\n  - {input: a goal, output: sports}\n  - {input: rain, output: weather}\n"


def fails_cleanly(args: list[str], capsys, *fragments: str, cwd: Path | None = None) -> str:
    """Run the CLI in-process; assert exit 2, exactly one stderr line starting `error:`, containing fragments."""
    capsys.readouterr()  # drop whatever the test's own setup printed
    old = Path.cwd()
    if cwd:
        os.chdir(cwd)
    try:
        code = main(args)
    finally:
        os.chdir(old)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def no_leftovers(root: Path) -> None:
    """Nothing half-written: no temporary files or directories anywhere under root."""
    assert not [p for p in root.rglob("*.tmp")], list(root.rglob("*.tmp"))


def eval_args(task: Path, tmp_path: Path) -> list[str]:
    return ["eval", "--task", str(task), "--model", str(tmp_path / "none.gguf"), "--out", str(tmp_path / "out.json")]


TASK_CASES = {
    "invalid JSON, with its line": ('{\n  "Definition": ["Say it."],\n  "Instances": [}\n', "t.json", ["t.json:3:", "invalid JSON"]),
    "invalid YAML, with its line": ("instruction: x\nexamples:\n  - input: a\n    output: b: c\n", "t.yaml", ["t.yaml:4:", "invalid YAML"]),
    "no instruction": ('instruction: ""\nexamples:\n  - {input: a, output: b}\n', "t.yaml", ["'instruction' is empty"]),
    "no examples": ("instruction: Say it.\nexamples: []\n", "t.yaml", ["'examples' is empty"]),
    "an example without output": ("instruction: Say it.\nexamples:\n  - {input: a, output: b}\n  - {input: c}\n", "t.yaml",
                                  ["examples[1]: missing 'output'"]),
    "an example without input": ('{"Definition": ["Say it."], "Positive Examples": [{"output": "x"}], "Instances": []}', "t.json",
                                 ["Positive Examples[0]: missing 'input'"]),
    "labels for a generation task": ("instruction: Summarise.\ntype: generation\nlabels: [a, b]\nexamples:\n  - {input: a, output: b}\n",
                                     "t.yaml", ["t.yaml", "labels were given for a generation task"]),
    "unknown task format": ('{"prompt": "x", "answer": "y"}', "t.json", ["unknown task format", "prompt"]),
    "not an object": ("[1, 2]", "t.json", ["must hold one object"]),
    "not UTF-8": (b"instruction: caf\xe9\n", "t.yaml", ["not UTF-8"]),
    # issue 42, found by reading the loaders as a tired user would write files:
    "an empty file": ("", "t.yaml", ["t.yaml: the file is empty"]),
    "a key written twice (YAML keeps the last)": (
        "instruction: Say it.\ninstruction: Say the other thing.\nexamples:\n  - {input: a, output: b}\n", "t.yaml",
        ["t.yaml:2:", "key 'instruction' appears twice (first at line 1)"]),
    "a key written twice (JSON)": ('{"Definition": ["a"], "Definition": ["b"], "Positive Examples": []}', "t.json",
                                   ["key 'Definition' appears twice"]),
    "nested beyond the parser": ("[" * 100000 + "]" * 100000, "t.json", ["nested too deeply"]),
    "a list where text belongs": ("instruction: Say it.\nexamples:\n  - {input: a, output: [b, c]}\n", "t.yaml",
                                  ["examples[0]: output: expected text, got a list"]),
    "an instruction that is a list": ("instruction: [Say, it]\nexamples:\n  - {input: a, output: b}\n", "t.yaml",
                                      ["'instruction' must be the task's instruction text, not a list"]),
    "an output left blank (null)": ("instruction: Say it.\nexamples:\n  - {input: a, output: b}\neval:\n  - {id: 1, input: a, output:}\n",
                                    "t.yaml", ["eval[0]: output: expected text, got nothing (null)"]),
    "an empty answer": ("instruction: Say it.\nexamples:\n  - {input: a, output: ' '}\n", "t.yaml", ["examples[0]: output is empty"]),
    "NI instance with no accepted answer": (
        '{"Definition": ["a"], "Positive Examples": [{"input": "x", "output": "y"}], "Instances": [{"id": "i", "input": "x", "output": []}]}',
        "t.json", ["Instances[0]: output: the list of accepted answers is empty"]),
    "a label listed twice": ("instruction: Say it.\nlabels: [Yes, 'yes.']\nexamples:\n  - {input: a, output: Yes}\n", "t.yaml",
                             ["'labels' lists 'yes.' twice"]),
    "one label only": ("instruction: Say it.\nlabels: [yes]\nexamples:\n  - {input: a, output: yes}\n", "t.yaml",
                       ["'labels' needs at least two labels"]),
    "a blank label": ("instruction: Say it.\nlabels: ['', yes]\nexamples:\n  - {input: a, output: yes}\n", "t.yaml",
                      ["'labels' holds an empty label"]),
}


@pytest.mark.parametrize("case", list(TASK_CASES))
def test_bad_task_files(case, tmp_path, capsys):
    content, name, fragments = TASK_CASES[case]
    task = tmp_path / name
    task.write_bytes(content if isinstance(content, bytes) else content.encode())
    fails_cleanly(eval_args(task, tmp_path), capsys, *fragments)
    assert not (tmp_path / "out.json").exists()
    no_leftovers(tmp_path)


def test_missing_and_unreadable_task_file(tmp_path, capsys):
    fails_cleanly(eval_args(tmp_path / "absent.json", tmp_path), capsys, "task file not found", "absent.json")
    (tmp_path / "adir").mkdir()
    fails_cleanly(eval_args(tmp_path / "adir", tmp_path), capsys, "is a directory")


def test_generation_labels_conflict_on_the_command_line(tmp_path, capsys):
    task = tmp_path / "t.yaml"
    task.write_text(GOOD_TASK)
    fails_cleanly(["synth", "--task", str(task), "--model", "x.gguf", "--out", str(tmp_path / "o"),
                   "--task-type", "generation", "--labels", "a,b"], capsys, "labels were given for a generation task")


def test_seed_file_bad_line_stops_with_its_number_or_is_skipped(tmp_path, capsys):
    from selfguide_lite.tasks import load_seed_pool

    seeds = tmp_path / "s.jsonl"
    good = {"id": "a", "instruction": "Say hi.", "instances": [{"input": "", "output": "hi"}], "is_classification": False}
    seeds.write_text(json.dumps(good) + "\n{not json\n" + json.dumps({**good, "instruction": ""}) + "\n")
    fails_cleanly(["instruct", "--seed-tasks", str(seeds), "--model", str(tmp_path / "m.gguf"), "--out", str(tmp_path / "o")],
                  capsys, "s.jsonl:2:", "not valid JSON", "bad_seed_lines")
    assert not (tmp_path / "o").exists()
    warnings: list[str] = []
    pool = load_seed_pool(seeds, "skip", warn=warnings.append)
    assert [s.id for s in pool] == ["a"]
    assert len(warnings) == 2 and "s.jsonl:2:" in warnings[0] and "s.jsonl:3: missing or empty 'instruction'" in warnings[1]


def test_model_paths(tmp_path, capsys, tiny_llama):
    (tmp_path / "t.yaml").write_text(GOOD_TASK + "eval:\n  - {id: e1, input: snow, output: weather}\n")
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"prompt": "p", "completion": "c"}) + "\n")
    train = ["train", "--data", str(data), "--out", str(tmp_path / "adapter"), "--model"]
    fails_cleanly([*train, str(tmp_path / "nowhere")], capsys, "model not found")
    no_weights = tmp_path / "no-weights"
    shutil.copytree(tiny_llama, no_weights)
    for f in no_weights.glob("*.safetensors"):
        f.unlink()
    fails_cleanly([*train, str(no_weights)], capsys, "no .safetensors weights")
    no_tok = tmp_path / "no-tokenizer"
    shutil.copytree(tiny_llama, no_tok)
    for name in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json"):
        (no_tok / name).unlink(missing_ok=True)
    fails_cleanly([*train, str(no_tok)], capsys, "has no tokenizer")
    # issue 42: files that are not what their names say (a cut download, a wrong file) are one line
    weights = sorted(tiny_llama.glob("*.safetensors"))[0]
    for name, damage, fragment in (
            ("config.json", lambda f: f.write_text("{"), "config.json:1:2: invalid JSON"),
            ("config.json", lambda f: f.write_text('{"hidden_size": 8}'), "no 'model_type'"),
            ("tokenizer_config.json", lambda f: f.write_text("[]"), "expected a JSON object, got list"),
            (weights.name, lambda f: f.write_bytes(f.read_bytes()[:len(f.read_bytes()) // 2]), "truncated"),
            (weights.name, lambda f: f.write_bytes(b"<html>not found</html>"), "not a safetensors file")):
        broken = tmp_path / "broken"
        shutil.rmtree(broken, ignore_errors=True)
        shutil.copytree(tiny_llama, broken)
        damage(broken / name)
        fails_cleanly([*train, str(broken)], capsys, name, fragment)
        run_dir = tmp_path / "run"
        fails_cleanly(["loop", "--task", str(tmp_path / "t.yaml"), "--model", str(broken), "--run-dir", str(run_dir)],
                      capsys, name, fragment)
        assert not run_dir.exists()
    assert not (tmp_path / "adapter").exists()


def test_unreachable_hub_id_gives_an_offline_hint(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"prompt": "p", "completion": "c"}) + "\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home")}
    res = subprocess.run([sys.executable, "-m", "selfguide_lite", "train", "--data", str(data), "--model",
                          "some-org/some-model", "--out", str(tmp_path / "a")], capture_output=True, text=True, env=env)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: could not reach the Hugging Face hub for some-org/some-model")
    assert "offline?" in lines[0]


def test_corrupted_and_truncated_gguf(tmp_path, capsys, tiny_llama):
    from selfguide_lite.export import convert_to_gguf

    task = tmp_path / "t.yaml"
    task.write_text(GOOD_TASK)
    good = convert_to_gguf(tiny_llama, tmp_path / "m.gguf", "f16")
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(b"GGUF" + os.urandom(4000))
    for bad in (truncated, garbage, tmp_path / "missing.gguf"):
        fails_cleanly(["eval", "--task", str(task), "--model", str(bad), "--out", str(tmp_path / "e.json")], capsys,
                      bad.name)
    assert not (tmp_path / "e.json").exists()


def _adapter_for(base: Path, out: Path) -> Path:
    """A real (untrained) LoRA adapter saved for `base`."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), LoraConfig(r=4, target_modules="all-linear"))
    model.save_pretrained(out)
    return out


def test_adapter_that_does_not_match_the_base(tmp_path, capsys, tiny_llama):
    from selfguide_lite.toy_models.tiny import SHAPES, build_tiny_model
    from tests.helpers import CORPUS

    other = tmp_path / "other-base"
    build_tiny_model(other, CORPUS, arch="llama", shape=SHAPES["small"], vocab_size=320, seed=3)
    adapter = _adapter_for(tiny_llama, tmp_path / "adapter")
    out = tmp_path / "out" / "m.gguf"
    fails_cleanly(["export", "--model", str(other), "--adapter", str(adapter), "--out", str(out)], capsys,
                  "does not match base", "adapter")
    assert not out.exists() and not (out.parent.exists() and any(out.parent.iterdir()))


def test_unsupported_architecture_is_refused_before_merging(tmp_path, capsys, tiny_llama):
    base = tmp_path / "foo-base"
    shutil.copytree(tiny_llama, base)
    cfg = json.loads((base / "config.json").read_text())
    cfg["architectures"] = ["FooForCausalLM"]
    (base / "config.json").write_text(json.dumps(cfg))
    adapter = _adapter_for(tiny_llama, tmp_path / "adapter")
    out = tmp_path / "out" / "m.gguf"
    fails_cleanly(["export", "--model", str(base), "--adapter", str(adapter), "--out", str(out)], capsys,
                  "FooForCausalLM is not supported by llama.cpp's GGUF converter")
    assert not (tmp_path / "out").exists()


def test_incompatible_or_corrupt_run_directory(tmp_path, capsys, tiny_llama):
    task = tmp_path / "t.yaml"
    task.write_text(GOOD_TASK + "eval:\n  - {input: snow, output: weather}\n")
    run = tmp_path / "run"
    run.mkdir()
    (run / "manifest.json").write_text(json.dumps({"format": 99, "stages": {}, "rounds": {}}))
    args = ["loop", "--task", str(task), "--model", str(tiny_llama), "--run-dir", str(run)]
    fails_cleanly(args, capsys, "incompatible selfguide_lite", "--fresh")
    assert sorted(p.name for p in run.iterdir()) == ["manifest.json"]  # nothing written into it
    (run / "manifest.json").write_text('{"stages": ')
    fails_cleanly(args, capsys, "manifest.json is not valid JSON")


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["--resume", "--fresh"], "--resume and --fresh contradict"),
        (["--method", "self-instruct", "--labels", "a,b"], "--labels applies to --method self-guide"),
        (["--seed-tasks", "s.jsonl"], "--seed-tasks applies to --method self-instruct"),
        (["--method", "both"], "--method must be"),
        (["--rounds", "-1"], "rounds"),
        (["--quant", "q3_k"], "quant"),
    ],
)
def test_conflicting_or_invalid_options(extra, fragment, tmp_path, capsys):
    task = tmp_path / "t.yaml"
    task.write_text(GOOD_TASK)
    fails_cleanly(["loop", "--task", str(task), "--model", str(tmp_path / "m"), "--run-dir", str(tmp_path / "r"), *extra],
                  capsys, fragment)
    assert not (tmp_path / "r").exists()


def test_resume_needs_an_existing_run(tmp_path, capsys):
    task = tmp_path / "t.yaml"
    task.write_text(GOOD_TASK)
    fails_cleanly(["loop", "--task", str(task), "--model", str(tmp_path / "m"), "--run-dir", str(tmp_path / "r"),
                   "--resume"], capsys, "--resume: no run to resume")


def test_bad_config_file(tmp_path, capsys):
    task = tmp_path / "t.yaml"
    task.write_text(GOOD_TASK)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  learning_rate: fast\n")
    fails_cleanly(["eval", "--task", str(task), "--model", "m.gguf", "--config", str(cfg)], capsys,
                  "c.yaml", "train.learning_rate")


@pytest.mark.parametrize("setting, fragment", [
    ("selfguide:\n  num_inputs: true\n", "selfguide.num_inputs: Input should be a valid integer"),
    ("selfguide:\n  num_inputs: '40'\n", "selfguide.num_inputs: Input should be a valid integer"),
    ("selfguide:\n  num_inputs: 2.5\n", "selfguide.num_inputs"),
])
def test_config_values_are_taken_as_written_not_coerced(setting, fragment, tmp_path, capsys):
    """`true` is not the number 1 and `'40'` is text: a lax reading would run a different job silently."""
    task = tmp_path / "t.yaml"
    task.write_text(GOOD_TASK)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(setting)
    fails_cleanly(["eval", "--task", str(task), "--model", "m.gguf", "--config", str(cfg)], capsys, "c.yaml", fragment)


def test_seed_lines_with_values_of_the_wrong_kind_are_refused(tmp_path):
    """`"is_classification": "false"` is a non-empty string, true to Python; an output list became its repr."""
    from selfguide_lite.errors import UserError
    from selfguide_lite.tasks import load_seed_pool

    good = {"id": "a", "instruction": "Say hi.", "instances": [{"input": "", "output": "hi"}], "is_classification": False}
    for bad, fragment in (({"is_classification": "false"}, "'is_classification' must be true or false, not 'false'"),
                          ({"instances": [{"input": "", "output": ["hi"]}]}, "instances[0]: output: expected text, got a list")):
        seeds = tmp_path / "s.jsonl"
        seeds.write_text(json.dumps(good) + "\n" + json.dumps({**good, **bad}) + "\n")
        with pytest.raises(UserError, match="s.jsonl:2: " + fragment.replace("[", "\\[").replace("]", "\\]")):
            load_seed_pool(seeds)


def test_an_unknown_method_in_a_config_file_is_refused_where_the_method_is_looked_up(tmp_path, capsys):
    task = tmp_path / "t.yaml"
    task.write_text(GOOD_TASK)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("loop:\n  method: nope\n")
    fails_cleanly(["loop", "--task", str(task), "--model", "m.gguf", "--config", str(cfg), "--run-dir",
                   str(tmp_path / "r")], capsys, "loop.method", "self-guide, self-instruct", "'nope'")
    assert not (tmp_path / "r").exists()


def test_a_bug_is_one_line_unless_debug(tmp_path, capsys, monkeypatch):
    import selfguide_lite.cli as cli

    def boom(*a, **k):
        raise ZeroDivisionError("synthetic bug")

    monkeypatch.setattr("selfguide_lite.tasks.load_task", boom)
    task = tmp_path / "t.yaml"
    task.write_text(GOOD_TASK)
    monkeypatch.setitem(cli._DEBUG, "on", False)
    assert main(["score", "--task", str(task), "--predictions", str(tmp_path / "p.jsonl")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "ZeroDivisionError: synthetic bug" in err and "--debug" in err
    assert main(["--debug", "score", "--task", str(task), "--predictions", str(tmp_path / "p.jsonl")]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_training_data_that_is_not_json_lines_names_file_and_line(tmp_path, capsys):
    bad = tmp_path / "rows.jsonl"
    bad.write_text('{"prompt": "a", "completion": "b"}\nnot json\n')
    fails_cleanly(["train", "--data", str(bad), "--model", str(tmp_path / "none"), "--out", str(tmp_path / "a")],
                  capsys, "rows.jsonl:2:", "not valid JSON")
    bad.write_text('{"prompt": "a", "completion": "b"}\n\n{"prompt": "a"}\n')
    fails_cleanly(["train", "--data", str(bad), "--model", str(tmp_path / "none"), "--out", str(tmp_path / "a")],
                  capsys, "rows.jsonl:3:", "'completion'")
    no_leftovers(tmp_path)


def test_output_paths_that_are_files_or_directories(tmp_path, capsys):
    a_file = tmp_path / "afile"
    a_file.write_text("x")
    task = tmp_path / "t.yaml"
    task.write_text("instruction: Say it.\nexamples:\n  - {input: a, output: b}\n")
    gguf = tmp_path / "none.gguf"
    fails_cleanly(["loop", "--task", str(task), "--model", str(gguf), "--run-dir", str(a_file)], capsys,
                  "run directory", "is a file, not a directory")
    fails_cleanly(["loop", "--task", str(task), "--model", str(gguf), "--run-dir", str(a_file / "sub")], capsys,
                  "is a file, not a directory")
    fails_cleanly(["synth", "--task", str(task), "--model", str(gguf), "--out", str(a_file)], capsys, "is a file")
    fails_cleanly(["demo-model", "--out", str(a_file)], capsys, "is a file")
    fails_cleanly(["eval", "--task", str(task), "--model", str(gguf), "--out", str(tmp_path)], capsys, "is a directory")
    fails_cleanly(["train", "--data", str(task), "--model", str(gguf), "--out", str(a_file)], capsys, "is a file")
    assert a_file.read_text() == "x"
    no_leftovers(tmp_path)


def test_predictions_with_unicode_line_separators_score(tmp_path):
    """A predictions file our own write_jsonl wrote, holding U+2028 / U+0085 inside a string, scores
    (splitting lines at those characters used to break it)."""
    import json
    import subprocess
    import sys

    from selfguide_lite.store import write_jsonl

    task = tmp_path / "t.json"
    task.write_text(json.dumps({"instruction": "Say it.", "examples": [{"input": "a", "output": "b"}],
                                "eval": [{"id": "x1", "input": "q", "output": "yes\u2028no"},
                                         {"id": "x2", "input": "r", "output": "no"}]}))
    preds = tmp_path / "p.jsonl"
    write_jsonl(preds, [{"id": "x1", "prediction": "yes\u2028no"}, {"id": "x2", "prediction": "n\u0085o"}])
    assert "\u2028" in preds.read_text(encoding="utf-8")  # written raw, so the reader must cope
    out = subprocess.run([sys.executable, "-m", "selfguide_lite", "score", "--task", str(task), "--predictions",
                          str(preds)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["n"] == 2 and got["split"] == "validation" and got["exact_match"] == 50.0


def test_the_old_seeds_flag_warns_once_and_means_seed_tasks(tmp_path, capsys):
    """`--seeds` was the seed-pool option before `--seed-tasks`: still read, with one warning line."""
    task = tmp_path / "t.yaml"
    task.write_text(GOOD_TASK)
    capsys.readouterr()
    code = main(["loop", "--task", str(task), "--model", str(tmp_path / "m"), "--run-dir", str(tmp_path / "r"),
                 "--seeds", "s.jsonl"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert lines == ["warning: --seeds is now --seed-tasks (the Self-Instruct seed tasks file)",
                     "error: --seed-tasks applies to --method self-instruct, not self-guide"]


# --- task files a user really writes (issue 42) ---------------------------------------------------

YES_NO_TASK = """instruction: Is the sentence about the weather? Answer yes or no.
labels: [yes, no]
examples:
  - {input: Rain is coming, output: yes}
  - {input: The shop opens at 9, output: no}
eval:
  - {id: e-1, input: Snow in May, output: yes}
  - {id: e-2, input: A new bakery, output: No}
  - {id: e-3, input: "007 is a film", output: no}
"""


def test_yes_no_labels_stay_the_words_the_user_wrote(tmp_path):
    from selfguide_lite.tasks import load_task

    path = tmp_path / "weather.yaml"
    path.write_text(YES_NO_TASK.replace('"007 is a film"', "007"))
    task = load_task(path)
    assert task.labels == ["yes", "no"] and [d.output for d in task.demos] == ["yes", "no"]
    assert [i.outputs for i in task.instances] == [("yes",), ("No",), ("no",)]
    assert task.instances[2].input == "007"  # not the number 7


def test_an_output_outside_the_declared_labels_is_refused_naming_the_entry(tmp_path, capsys):
    path = tmp_path / "weather.yaml"
    path.write_text(YES_NO_TASK.replace("output: No}", "output: noo}"))
    fails_cleanly(["eval", "--task", str(path), "--model", str(tmp_path / "m.gguf")], capsys,
                  "eval[1]: output 'noo' is not one of the labels yes, no", "add it to 'labels'")
    path.write_text(YES_NO_TASK.replace("{input: Rain is coming, output: yes}", "{input: Rain is coming, output: yess}"))
    fails_cleanly(["eval", "--task", str(path), "--model", str(tmp_path / "m.gguf")], capsys, "examples[0]: output 'yess'")


def test_two_evaluation_instances_with_one_id_are_refused(tmp_path, capsys):
    path = tmp_path / "weather.yaml"
    path.write_text(YES_NO_TASK.replace("id: e-2", "id: e-1"))
    fails_cleanly(["eval", "--task", str(path), "--model", str(tmp_path / "m.gguf")], capsys,
                  "eval[1]: id 'e-1' is already used by eval[0]")


def test_a_task_without_evaluation_instances_is_refused_before_anything_is_written(tmp_path, capsys):
    path = tmp_path / "t.yaml"
    path.write_text(GOOD_TASK)
    run = tmp_path / "run"
    fails_cleanly(["loop", "--task", str(path), "--model", str(tmp_path / "m.gguf"), "--run-dir", str(run)], capsys,
                  "has no evaluation instances", "'eval:'")
    assert not run.exists()


# --- configuration files (issue 42) ---------------------------------------------------------------

def test_a_config_file_that_is_not_utf8_is_one_error_line(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_bytes("# r\xe9glages\nselfguide: {num_inputs: 8}\n".encode("latin-1"))
    fails_cleanly(["config", "--print", "--config", str(cfg)], capsys, "not UTF-8", "save the file as UTF-8")


def test_old_setting_names_are_validated_like_new_ones(tmp_path, capsys):
    from selfguide_lite.config import load_config

    cfg = tmp_path / "c.yaml"
    cfg.write_text("selfguide:\n  input_lead: flase\n")
    fails_cleanly(["config", "--print", "--config", str(cfg)], capsys,
                  "selfguide.input_lead (an old setting name): expected true or false, got 'flase'")
    cfg.write_text("selfguide:\n  field_filter: 0\n  context_sampling: request\n")
    assert set(load_config(cfg, warn=lambda line: None).selfguide.without) == {"field_filter", "wave_context"}
    cfg.write_text("selfguide:\n  context_sampling: waves\n")
    fails_cleanly(["config", "--print", "--config", str(cfg)], capsys, "expected wave or request, got 'waves'")
