"""Command line: thin typer commands, each parsing arguments and calling one function (contract §6).

User errors (`UserError`, bad options, a full disk) print one `error: ...` line and exit 2. Any other
exception is a bug: one line and exit 1, or its full traceback with `--debug` (or SELFGUIDE_DEBUG=1).
"""

from __future__ import annotations

import errno
import json
import os
import shlex
import sys
import time
import traceback
from pathlib import Path
from typing import Annotated

import typer

from .config import Config, load_config, setting_help
from .errors import UserError
from .store import output_dir, output_file

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Make a small language model better at a task using only data it writes itself.",
)

STUDENT_HELP = setting_help("model")
# (no square brackets in help texts: the help renderer reads them as markup)
GGUF_HELP = "a student GGUF: a file, a built-in name, ollama:NAME:TAG (tag optional) or lmstudio:PUBLISHER/NAME/FILE (file optional)"
# Task overrides shared by the commands that load a task (loop, synth, eval).
TaskTypeOption = Annotated[str | None, typer.Option(help=setting_help("task_type"))]
LabelsOption = Annotated[str | None, typer.Option(help=setting_help("labels"))]


_DEBUG = {"on": bool(os.environ.get("SELFGUIDE_DEBUG"))}
_ARGV: list[str] = []
# `--endpoint`, shared by every command that samples (synth, instruct, eval, loop).
EndpointOption = Annotated[
    list[str] | None, typer.Option("--endpoint", help="OpenAI-compatible server URL to sample from (repeatable)")
]  # this invocation's arguments, recorded in the run's manifest


# `--method` on the commands that render prompts outside a loop (train, eval): the same rule as the loop.
MethodOption = Annotated[
    str | None, typer.Option(help="self-guide or self-instruct: render prompts as that method's loop does (default: self-guide)")
]


@app.callback()
def _global_options(
    debug: Annotated[bool, typer.Option("--debug", help="show full tracebacks for every error")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars or lines; stage summaries only")] = False,
    plain: Annotated[bool, typer.Option("--plain", help="progress as plain lines (automatic when not a terminal)")] = False,
) -> None:
    """Make a small language model better at a task using only data it writes itself."""
    from . import progress

    if debug:
        _DEBUG["on"] = True
    if quiet and plain:
        raise UserError("--quiet and --plain contradict each other: pick one")
    progress.set_mode("quiet" if quiet else "plain" if plain else "auto")


def _log(msg: str) -> None:
    print(msg, flush=True)


def _config(config: Path | None, **overrides) -> Config:
    return load_config(config, overrides)


@app.command()
def loop(
    task: Annotated[str | None, typer.Option(help=setting_help("task"))] = None,
    model: Annotated[str | None, typer.Option(help=STUDENT_HELP)] = None,
    rounds: Annotated[int | None, typer.Option(help=setting_help("loop.rounds"))] = None,
    run_dir: Annotated[str | None, typer.Option(help="run directory (default: runs/<task name>)")] = None,
    config: Annotated[Path | None, typer.Option(help="YAML configuration file")] = None,
    seed: Annotated[int | None, typer.Option(help=setting_help("seed"))] = None,
    method: Annotated[str | None, typer.Option(help=setting_help("loop.method"))] = None,
    seed_tasks: Annotated[str | None, typer.Option(help=setting_help("seed_tasks"))] = None,
    seeds: OldSeedsOption = None,
    eval_tasks: Annotated[list[str] | None, typer.Option(help=setting_help("eval_tasks"))] = None,
    task_type: TaskTypeOption = None,
    labels: LabelsOption = None,
    num_inputs: Annotated[int | None, typer.Option(help=setting_help("selfguide.num_inputs"))] = None,
    num_instructions: Annotated[int | None, typer.Option(help=setting_help("selfinstruct.num_instructions"))] = None,
    train_from: Annotated[str | None, typer.Option(help=setting_help("loop.train_from"))] = None,
    data: Annotated[str | None, typer.Option(help=setting_help("loop.data"))] = None,
    quant: Annotated[str | None, typer.Option(help=setting_help("export.quant"))] = None,
    resume: Annotated[bool, typer.Option("--resume", help="continue the run in --run-dir (the default when it exists)")] = False,
    fresh: Annotated[bool, typer.Option("--fresh", help="start over in a new run directory (NAME-2, NAME-3, ...)")] = False,
    endpoint: EndpointOption = None,
    demo: Annotated[str | None, typer.Option(help="with no --task/--model: smollm2 (the default), world, or self-instruct")] = None,
) -> None:
    """Run the whole loop. With no --task and no --model: the offline demo (SmolLM2-135M-Instruct on a
    Natural Instructions task shipped with the package)."""
    t0 = time.monotonic()
    is_demo = task is None and model is None
    if demo is not None and not is_demo:
        raise UserError("--demo runs a built-in demo: leave out --task and --model")
    seed_tasks = _seed_tasks(seed_tasks, seeds)
    _check_loop_options(method, resume, fresh, {"--labels": labels, "--task-type": task_type, "--num-inputs": num_inputs,
                                                "--seed-tasks": seed_tasks, "--eval-tasks": eval_tasks,
                                                "--num-instructions": num_instructions})
    overrides = {
        "task": task, "model": model, "run_dir": run_dir, "seed": seed, "seed_tasks": seed_tasks,
        "eval_tasks": eval_tasks, "task_type": task_type,
        "labels": [x.strip() for x in labels.split(",")] if labels else None,
        "selfguide": {"num_inputs": num_inputs},
        "selfinstruct": {"num_instructions": num_instructions},
        "export": {"quant": quant},
        "engine": {"endpoints": endpoint},
        "loop": {"rounds": rounds, "method": method, "train_from": train_from, "data": data},
    }
    preset = None
    if is_demo:
        from .demo import demo_setup

        preset = demo_setup(demo, method, overrides, log=_log)
    cfg = load_config(config, overrides, preset)
    from .loop import run_loop
    from .methods import method_for
    from .runs import resolve_run_dir

    run_dir = resolve_run_dir(cfg.run_dir, method_for(cfg).default_run_name(), fresh=fresh, resume=resume, log=_log)
    cfg = cfg.model_copy(update={"run_dir": str(run_dir)})

    summary = run_loop(cfg, _log, command="python -m selfguide_lite " + shlex.join(_ARGV))
    _log("")
    _log(f"done in {time.monotonic() - t0:.0f}s")
    from .runs import summary_lines

    for line in summary_lines(summary):
        _log(line)


OldSeedsOption = Annotated[str | None, typer.Option("--seeds", hidden=True, help="old name of --seed-tasks")]


def _seed_tasks(seed_tasks: str | None, old_seeds: str | None) -> str | None:
    """--seed-tasks, or the old --seeds with one warning line (scripts use --seeds for random seeds)."""
    if old_seeds is not None:
        print("warning: --seeds is now --seed-tasks (the Self-Instruct seed tasks file)", file=sys.stderr)
    return seed_tasks if seed_tasks is not None else old_seeds


def _check_loop_options(method: str | None, resume: bool, fresh: bool, given: dict[str, object]) -> None:
    """Options that contradict each other are refused before anything runs: a flag that only another
    method reads (the registry says which) is an error, not silently ignored."""
    from .methods.base import all_flags, method_class

    if resume and fresh:
        raise UserError("--resume and --fresh contradict each other: pick one")
    chosen = method_class(method or "self-guide").name
    for flag, owner in all_flags().items():
        if owner != chosen and given.get(flag) not in (None, [], ""):
            raise UserError(f"{flag} applies to --method {owner}, not {chosen}")


@app.command()
def synth(
    task: Annotated[str, typer.Option(help="task file")],
    model: Annotated[str, typer.Option(help=GGUF_HELP)],
    out: Annotated[Path, typer.Option(help="output directory")],
    num_inputs: Annotated[int | None, typer.Option(help=setting_help("selfguide.num_inputs"))] = None,
    config: Annotated[Path | None, typer.Option(help="YAML configuration file")] = None,
    seed: Annotated[int | None, typer.Option(help="seed (default: the config's seed)")] = None,
    task_type: TaskTypeOption = None,
    labels: LabelsOption = None,
    endpoint: EndpointOption = None,
) -> None:
    """One Self-Guide synthesis: OUT/train.jsonl, OUT/dropped.jsonl, OUT/stats.json."""
    from .methods import method_for
    from .methods.stages import run_synthesis
    from .models import sampling_gguf

    output_dir(out)
    cfg = _config(config, task=task, task_type=task_type, labels=[x.strip() for x in labels.split(",")] if labels else None,
                  selfguide={"num_inputs": num_inputs}, engine={"endpoints": endpoint}, loop={"method": "self-guide"})
    method = method_for(cfg)
    method.check_inputs()
    method.eval_tasks()  # a bad task file fails here, before the model loads
    stats = run_synthesis(cfg, method, sampling_gguf(model), out, cfg.seed if seed is None else seed)
    _log(json.dumps(stats, indent=2))


@app.command()
def instruct(
    model: Annotated[str, typer.Option(help=GGUF_HELP)],
    out: Annotated[Path, typer.Option(help="output directory")],
    seed_tasks: Annotated[str | None, typer.Option(help=setting_help("seed_tasks"))] = None,
    seeds: OldSeedsOption = None,
    num_instructions: Annotated[int | None, typer.Option(help=setting_help("selfinstruct.num_instructions"))] = None,
    config: Annotated[Path | None, typer.Option(help="YAML configuration file")] = None,
    seed: Annotated[int | None, typer.Option(help="seed (default: the config's seed)")] = None,
    endpoint: EndpointOption = None,
) -> None:
    """Self-Instruct bootstrap: OUT/instances.jsonl, OUT/train.jsonl, OUT/dropped.jsonl, OUT/stats.json."""
    from .methods import method_for
    from .methods.stages import run_synthesis
    from .models import sampling_gguf

    seed_tasks = _seed_tasks(seed_tasks, seeds)
    if not seed_tasks:
        raise UserError("instruct needs --seed-tasks (Self-Instruct seed tasks, JSON Lines)")
    output_dir(out)
    cfg = _config(config, seed_tasks=seed_tasks, selfinstruct={"num_instructions": num_instructions}, engine={"endpoints": endpoint},
                  loop={"method": "self-instruct"})
    method = method_for(cfg)
    method.seed_pool()  # a bad seed file fails here, before the model loads; read once, used by the synthesis
    stats = run_synthesis(cfg, method, sampling_gguf(model), out, cfg.seed if seed is None else seed)
    _log(json.dumps(stats, indent=2))


@app.command()
def train(
    data: Annotated[Path, typer.Option(help="training rows (JSON Lines with prompt, completion)")],
    model: Annotated[str, typer.Option(help=STUDENT_HELP)],
    out: Annotated[Path, typer.Option(help="adapter output directory")],
    config: Annotated[Path | None, typer.Option(help="YAML configuration file")] = None,
    quantization: Annotated[str | None, typer.Option(help=setting_help("train.quantization"))] = None,
    backend: Annotated[str | None, typer.Option(help=setting_help("train.backend"))] = None,
    epochs: Annotated[float | None, typer.Option(help=setting_help("train.epochs"))] = None,
    method: MethodOption = None,
) -> None:
    """QLoRA (or 16-bit LoRA) with completion-only loss, prompts rendered as the method's loop renders them."""
    from .methods import method_for
    from .train import train_adapter

    output_dir(out, "adapter directory")
    cfg = _config(config, train={"quantization": quantization, "backend": backend, "epochs": epochs},
                  loop={"method": method})
    info = train_adapter(data, model, out, cfg.train, _log, method_for(cfg).uses_chat_template())
    _log(json.dumps(info, indent=2))


@app.command()
def export(
    model: Annotated[str, typer.Option(help="the base the adapter was trained on: " + STUDENT_HELP[len("student: "):])],
    adapter: Annotated[Path, typer.Option(help="LoRA adapter directory")],
    out: Annotated[Path, typer.Option(help="output GGUF file")],
    quant: Annotated[str, typer.Option(help=setting_help("export.quant"))] = "auto",
) -> None:
    """Merge the adapter into the 16-bit base, convert to GGUF, quantize."""
    from .export import QUANT_TYPES
    from .export import export as do_export
    from .models import resolve_model_source

    if quant not in QUANT_TYPES:
        raise UserError(f"unknown --quant {quant!r}; choose one of {', '.join(QUANT_TYPES)}")
    output_file(out, "output GGUF")
    if not (adapter / "adapter_config.json").is_file():
        raise UserError(f"not a LoRA adapter directory (no adapter_config.json): {adapter}")
    from .usage import write_modelfile

    path = do_export(resolve_model_source(model, _log), adapter, out, quant)
    _log(f"wrote {path} and its Ollama Modelfile {write_modelfile(path).name}")


@app.command(name="eval")
def eval_cmd(
    task: Annotated[str, typer.Option(help="task file")],
    model: Annotated[str, typer.Option(help=GGUF_HELP)],
    split: Annotated[str, typer.Option(help="validation (for choosing anything) or test (only for reporting)")] = "test",
    task_type: TaskTypeOption = None,
    labels: LabelsOption = None,
    limit: Annotated[int | None, typer.Option(help="instances of the split (default: 100)")] = None,
    out: Annotated[Path | None, typer.Option(help="write predictions + metrics here")] = None,
    config: Annotated[Path | None, typer.Option(help="YAML configuration file")] = None,
    endpoint: EndpointOption = None,
    method: MethodOption = None,
) -> None:
    """Greedy predictions on one split of the task's held-out instances, and their metrics, with the
    prompt the method's loop evaluates with."""
    from .engine import open_sampler
    from .evaluate import evaluate
    from .methods import method_for
    from .models import sampling_gguf
    from .store import write_json
    from .tasks import SPLITS, load_task

    if split not in SPLITS:
        raise UserError(f"--split must be validation or test, not {split!r}")
    if limit is not None and limit < 1:
        raise UserError(f"--limit must be at least 1, not {limit}")
    if out:
        output_file(out)
    size = {"validation_size": limit} if split == "validation" else {"test_size": limit}
    cfg = _config(config, eval=size, engine={"endpoints": endpoint}, loop={"method": method}, task_type=task_type,
                  labels=[x.strip() for x in labels.split(",")] if labels else None)
    t = load_task(task, cfg.task_type, cfg.labels)
    prompt_fn, extra_stops = method_for(cfg).eval_prompt()
    with open_sampler(sampling_gguf(model), cfg.engine) as sampler:
        if not t.split(split, cfg.eval.validation_size, cfg.eval.test_size):
            raise UserError(f"task {t.name} has no {split} instances ({len(t.instances)} held out; validation "
                            f"takes the first {cfg.eval.validation_size}, test the next {cfg.eval.test_size})")
        result = evaluate(t, sampler, cfg.eval, prompt_fn=prompt_fn, fmt=method_for(cfg).prompt_format(sampler.info),
                          extra_stops=extra_stops, splits=(split,))
    if out:
        write_json(out, result)
    scores = result[split]
    _log(json.dumps({"task": t.name, "split": split, "n": scores["n"], "exact_match": scores["exact_match"],
                     "rougeL": scores["rougeL"], "primary_metric": result["primary_metric"], "skill": scores["skill"],
                     "verdict": scores["verdict"]}))


@app.command()
def score(
    task: Annotated[str, typer.Option(help="task file")],
    predictions: Annotated[Path, typer.Option(help='JSON Lines rows {"id", "prediction"}')],
    config: Annotated[Path | None, typer.Option(help="YAML configuration file (its eval split sizes)")] = None,
) -> None:
    """Metrics over the instances named in the predictions file; prints one JSON object, with the split
    those instances belong to (validation, test, mixed, or other: held out but in neither split)."""
    from .evaluate import score_rows
    from .store import read_jsonl
    from .tasks import SPLITS, load_task

    t = load_task(task)
    rows = read_jsonl(predictions, "predictions file", required={"id": str})
    s = score_rows(t, rows)
    cfg = load_config(config)
    member = {inst.id: name for name in SPLITS for inst in t.split(name, cfg.eval.validation_size, cfg.eval.test_size)}
    found = {member.get(r["id"], "other") for r in rows}
    split = found.pop() if len(found) == 1 else "mixed"
    from .metrics import verdict

    print(json.dumps({"task": s["task"], "split": split, "n": s["n"], "exact_match": s["exact_match"],
                      "rougeL": s["rougeL"], "skill": s["skill"], "verdict": verdict(s["skill"], s["rougeL"])}))


@app.command(name="demo-model")
def demo_model(
    out: Annotated[Path | None, typer.Option(help="output directory (default: models/demo-model)")] = None,
    size: Annotated[str, typer.Option(help="tiny or small")] = "tiny",
    seconds: Annotated[float, typer.Option(help="pretraining wall-clock budget")] = 150.0,
) -> None:
    """Build the local demo student (a tiny Llama pretrained on the demo task's formats)."""
    from .demo import demo_model_dir
    from .toy_models.headline import build_headline_student
    from .toy_models.tiny import SHAPES

    if size not in SHAPES:
        raise UserError(f"--size must be one of {', '.join(SHAPES)}")
    if not 0 < seconds <= 3600:
        raise UserError("--seconds must be in (0, 3600]")
    out = out or demo_model_dir()
    output_dir(out)
    _log(f"demo student at {build_headline_student(out, size=size, seconds=seconds, log=_log)}")


@app.command()
def chat(
    model: Annotated[str, typer.Argument(help="a GGUF file (e.g. runs/NAME/round-2/model-q8_0.gguf), a built-in name, "
                                              "ollama:NAME:TAG or lmstudio:PUBLISHER/NAME/FILE (tag and file optional)")],
    max_tokens: Annotated[int, typer.Option(help="new tokens per answer")] = 256,
    n_ctx: Annotated[int, typer.Option(help="context length (0: the model's own)")] = 0,
) -> None:
    """Type prompts, read the student's greedy answers (single turn, its own prompt format)."""
    from .models import sampling_gguf
    from .usage import chat as run_chat

    run_chat(sampling_gguf(model), max_tokens=max_tokens, n_ctx=n_ctx)


@app.command()
def serve(
    model: Annotated[str, typer.Argument(help=GGUF_HELP)],
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port")] = 8000,
    n_ctx: Annotated[int, typer.Option(help="context length (0: the model's own)")] = 0,
    threads: Annotated[int | None, typer.Option(help="llama.cpp threads (default: all cores)")] = None,
) -> None:
    """An OpenAI-compatible server (/v1/completions, /v1/chat/completions) on the student."""
    from .usage import serve as run_server

    if not 0 < port < 65536:
        raise UserError(f"--port must be 1-65535, not {port}")
    if threads is not None and threads < 1:
        raise UserError(f"--threads must be at least 1, not {threads}")
    from .models import sampling_gguf

    run_server(sampling_gguf(model), host=host, port=port, n_ctx=n_ctx, n_threads=threads)


@app.command()
def report(run_dir: Annotated[Path, typer.Argument(help="a run directory (holds manifest.json)")]) -> None:
    """Regenerate RUN_DIR/report.html from the run directory's files."""
    from .report import write_report

    if not (run_dir / "manifest.json").is_file():
        raise UserError(f"not a run directory (no manifest.json): {run_dir}")
    _log(f"wrote {write_report(run_dir)}")


@app.command(name="config")
def config_cmd(
    print_: Annotated[bool, typer.Option("--print", help="print every setting with its value and a one-line explanation")] = False,
    config: Annotated[Path | None, typer.Option(help="show this file resolved over the defaults")] = None,
) -> None:
    """Show the configuration: the defaults (or a file resolved over them), as an annotated YAML file."""
    from .config import annotated_yaml

    if not print_ and config is None:
        raise UserError("nothing to do: use --print (and --config FILE to resolve a file over the defaults)")
    sys.stdout.write(annotated_yaml(load_config(config)))


@app.command(name="models")
def models_cmd() -> None:
    """The students you can name: built-in ones (installed or not), and the GGUF models Ollama and LM
    Studio keep on this machine, with architecture, size, quantization and whether they can be students."""
    from .models import student_listing

    for line in student_listing():
        _log(line)


@app.command()
def doctor(
    run_dir: Annotated[Path, typer.Option(help="where runs go (its free disk space is reported)")] = Path("runs"),
) -> None:
    """What is installed, which backends work, GPU or not, free disk, the model cache."""
    from .doctor import report

    ok = report(_log, run_dir)
    if not ok:
        raise typer.Exit(1)


def main(argv: list[str] | None = None) -> int:
    _ARGV[:] = sys.argv[1:] if argv is None else list(argv)
    try:
        app(args=argv, standalone_mode=False)
    except UserError as exc:
        return _fail(str(exc), 2, exc)
    except typer.Exit as exc:
        return exc.exit_code
    except typer.TyperException as exc:  # typer's (vendored click) usage errors
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        return _fail(message, 2, exc)
    except (KeyboardInterrupt, typer.Abort):
        print("error: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            return _fail(f"no space left on the device while writing {exc.filename or 'a file'}; free some and re-run "
                         "(finished stages are kept)", 2, exc)
        return _fail(f"{exc.__class__.__name__}: {exc}", 1, exc, bug=True)
    except Exception as exc:  # a bug: keep it short unless asked
        return _fail(f"{exc.__class__.__name__}: {exc}", 1, exc, bug=True)
    return 0


def _fail(message: str, code: int, exc: BaseException, bug: bool = False) -> int:
    if _DEBUG["on"]:
        traceback.print_exception(exc)
    line = " ".join(str(message).split())
    hint = "" if _DEBUG["on"] or not bug else " (internal error; re-run with --debug for the traceback)"
    print(f"error: {line}{hint}", file=sys.stderr)
    return code
