"""report.html: one self-contained page that says what happened in each round of a run.

Built from the run directory alone (manifest.json, config.yaml, each round's synthesis files), so
`python -m selfguide_lite report RUN_DIR` regenerates it at any time. Sections: the exact command and
configuration; scores per round (table and plot, round 0 included, promoted rounds marked); the data
funnel of each round (candidates -> each filter -> kept); class balance (classification); a sample
of kept and of dropped examples with their drop reasons; time per stage. Plots are drawn with
matplotlib and embedded as PNG data URIs: the file opens offline, with no network assets.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

from .methods import method_of_stats
from .metrics import skill_line, verdict_sentence
from .runs import RoundRecord, rounds_of
from .store import atomic_write_text, disk_bytes, read_json, read_jsonl

SAMPLES_SHOWN = 6  # kept examples shown per round; dropped: up to 2 per drop stage
BLUE, GREY, RED, GREEN = "#2a6fdb", "#9aa5b1", "#d64545", "#2f9e44"


def _png(fig) -> str:
    """A matplotlib figure as an <img> with a base64 PNG data URI."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode()
    return f'<img class="plot" alt="plot" src="data:image/png;base64,{data}">'


def _figure(width: float, height: float):
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(width, height))
    ax.spines[["top", "right"]].set_visible(False)
    return fig, ax


def _esc(value: Any) -> str:
    return html.escape(str(value))


def _table(header: list[str], rows: list[list[Any]], raw: bool = False) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c if raw else _esc(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def scores_plot(rounds: list[tuple[int, RoundRecord]]) -> str:
    """The primary metric per round, validation (decides promotion) and test (only reported)."""
    points = [(k, rec) for k, rec in rounds if rec.metrics is not None]
    if not points:
        return "<p>no round has been evaluated yet</p>"
    fig, ax = _figure(6.4, 3.2)
    xs = [k for k, _ in points]
    primary = points[0][1].metrics.primary_metric
    for split, colour in (("validation", BLUE), ("test", GREY)):
        ys = [s.primary if (s := rec.metrics.get(split)) else None for _, rec in points]
        if all(y is None for y in ys):
            continue
        ax.plot(xs, [float("nan") if y is None else y for y in ys], marker="o", color=colour, label=split)
    for k, rec in points:
        y = rec.metrics.validation.primary
        ax.annotate(f"{y:.1f}", (k, y), textcoords="offset points", xytext=(0, 8), ha="center", fontsize=8)
        if not rec.promoted:
            ax.plot([k], [y], marker="x", color=RED, markersize=11, mew=2)
    ax.set_xticks(xs, [f"round {k}" for k in xs])
    ax.set_ylim(0, 105)
    ax.set_ylabel("score")
    ax.plot([], [], marker="x", color=RED, linestyle="none", label="not promoted")
    ax.legend(loc="lower right", fontsize=8, frameon=False)
    ax.set_title(f"{primary} per round (validation decides promotion; test only reported)", fontsize=10)
    return _png(fig)


def funnel_steps(stats: dict[str, Any]) -> list[tuple[str, int]]:
    """(step, rows remaining after it): the method that wrote the stats says how its funnel reads."""
    return method_of_stats(stats).funnel_steps(stats)


def funnel_plot(k: int, stats: dict[str, Any]) -> str:
    steps = funnel_steps(stats)
    fig, ax = _figure(6.4, 0.32 * len(steps) + 0.8)
    names = [s for s, _ in steps][::-1]
    values = [v for _, v in steps][::-1]
    colours = [GREEN if n == "training rows" else BLUE if not n.startswith("-") else GREY for n in names]
    ax.barh(names, values, color=colours)
    for y, v in enumerate(values):
        ax.text(v, y, f" {v}", va="center", fontsize=8)
    ax.set_xlabel("rows remaining")
    ax.set_title(f"round {k}: data funnel", fontsize=10)
    return _png(fig)


def balance_plot(k: int, annotated: dict[str, int], kept: dict[str, int]) -> str:
    labels = list(dict.fromkeys([*annotated, *kept]))
    fig, ax = _figure(6.4, 2.6)
    xs = range(len(labels))
    ax.bar([x - 0.2 for x in xs], [annotated.get(lab, 0) for lab in labels], width=0.4, color=GREY, label="labelled by the vote")
    ax.bar([x + 0.2 for x in xs], [kept.get(lab, 0) for lab in labels], width=0.4, color=BLUE, label="kept after balancing")
    ax.set_xticks(list(xs), labels, rotation=30 if len(labels) > 5 else 0, ha="right" if len(labels) > 5 else "center")
    ax.set_ylabel("rows")
    ax.legend(fontsize=8, frameon=False)
    ax.set_title(f"round {k}: class balance", fontsize=10)
    return _png(fig)


def stage_time_plot(stages: dict[str, dict[str, Any]]) -> str:
    timed = [(name, float(s["seconds"])) for name, s in stages.items() if s.get("seconds") is not None]
    if not timed:
        return ""
    fig, ax = _figure(6.4, 0.3 * len(timed) + 0.8)
    ax.barh([n for n, _ in timed][::-1], [t for _, t in timed][::-1], color=BLUE)
    ax.set_xlabel("seconds")
    ax.set_title("time per stage", fontsize=10)
    return _png(fig)


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    """A run file's records, or none when the stage has not written it."""
    return read_jsonl(path) if path.is_file() else []


def _examples_section(k: int, synth: Path) -> str:
    kept = _read_jsonl(synth / "instances.jsonl") or _read_jsonl(synth / "train.jsonl")
    dropped = _read_jsonl(synth / "dropped.jsonl")
    rows = []
    for r in kept[:SAMPLES_SHOWN]:
        text = r.get("input") if "input" in r else r.get("prompt", "")
        if r.get("instruction"):
            text = f"{r['instruction']} | {r.get('input', '')}"
        rows.append([text, r.get("output", r.get("completion", "")), r.get("agreement", "")])
    out = f"<h3>round {k}: kept ({len(kept)} rows, first {min(len(kept), SAMPLES_SHOWN)})</h3>"
    out += _table(["input", "output", "agreement"], rows) if rows else "<p>none</p>"
    per_stage: dict[str, list[dict[str, Any]]] = {}
    for d in dropped:
        per_stage.setdefault(str(d.get("stage")), []).append(d)
    drows = [[stage, d.get("input", d.get("instruction", "")), d.get("reason", "")]
             for stage, ds in per_stage.items() for d in ds[:2]]
    out += f"<h3>round {k}: dropped ({len(dropped)} rows, up to 2 per stage)</h3>"
    out += _table(["stage", "input", "reason"], drows) if drows else "<p>none</p>"
    return out


def skill_cell(rec: RoundRecord, split: str) -> str:
    s = rec.metrics.get(split) if rec.metrics else None
    if not (s and s.skill):
        return "-"
    return (f"{s.verdict}: " if s.verdict else "") + skill_line(s.skill)


def _score_rows(rounds: list[tuple[int, RoundRecord]]) -> list[list[Any]]:
    rows = []
    for k, rec in rounds:
        def cell(split: str, key: str, rec: RoundRecord = rec) -> str:
            s = rec.metrics.get(split) if rec.metrics else None
            return f"{getattr(s, key):.1f}" if s else "-"

        rows.append([
            k, rec.status, "-" if rec.train_size is None else rec.train_size,
            cell("validation", "exact_match"), cell("validation", "rougeL"), cell("test", "exact_match"),
            cell("test", "rougeL"), skill_cell(rec, "validation"), skill_cell(rec, "test"),
            "yes" if rec.promoted else "no", rec.gguf or "-",
        ])
    return rows


def _synthesis_sections(run_dir: Path, rounds: list[tuple[int, RoundRecord]]) -> tuple[list[str], list[str], list[str]]:
    """Per round that synthesised: its funnel (plot + table), class balance, examples kept and dropped."""
    funnels, balances, examples = [], [], []
    for k, rec in rounds:
        stats = rec.synth_stats
        if not stats:
            continue
        steps = funnel_steps(stats)
        funnels.append(funnel_plot(k, stats) + _table(["step", "rows remaining"], [list(s) for s in steps]))
        balance = method_of_stats(stats).class_balance(stats, _read_jsonl(run_dir / f"round-{k}" / "synth" / "dropped.jsonl"))
        if balance is not None:
            missing = balance.missing
            note = f"<p class='warn'>labels never produced: {_esc(', '.join(missing))}</p>" if missing else ""
            balances.append(balance_plot(k, balance.labelled, balance.kept) + note)
        examples.append(_examples_section(k, run_dir / f"round-{k}" / "synth"))
    return funnels, balances, examples


def _gate_table(rounds: list[tuple[int, RoundRecord]]) -> str:
    gate_rows = []
    for k, rec in rounds:
        if rec.gate:
            logits, answers = rec.gate.get("logits") or {}, rec.gate.get("answers") or {}
            gate_rows.append([k, "passed" if rec.gate.get("passed") else "rejected",
                              f"{logits.get('top1_agreement', 0) * 100:.1f}%",
                              f"{logits.get('max_diff_share_of_range', 0) * 100:.2f}%",
                              f"{answers['token_agreement'] * 100:.0f}% of tokens ({answers.get('ties', 0)} ties), "
                              f"{answers['agree']}/{answers['prompts']} answers"
                              if answers else "-",
                              rec.gate.get("seconds", "-"), "; ".join(rec.gate.get("problems") or []) or "-"])
    return _table(["round", "export check", "f16 logits top-1", "largest logit difference (share of range)",
                   "quantized vs 16-bit answers", "seconds", "problems"], gate_rows) if gate_rows else ""


def _disk_rows(run_dir: Path, rounds: list[tuple[int, RoundRecord]], pruned: dict[str, Any]) -> list[list[Any]]:
    rows = []
    for k, _rec in rounds:
        kept = disk_bytes(run_dir / f"round-{k}")
        freed = sum(p["bytes"] for p in pruned.values() if p.get("round") == k)
        rows.append([k, f"{kept / 2**20:.1f}", f"{freed / 2**20:.1f}",
                     ", ".join(sorted(Path(n).name for n, p in pruned.items() if p.get("round") == k)) or "-"])
    return rows


def _summary_line(final: dict[str, Any]) -> str:
    if not final:
        return "the run has not finished"
    verdicts = final.get("verdict") or {}
    said = "; ".join(f"{split}: {v}" for split, v in verdicts.items() if v)
    sentence = verdict_sentence(verdicts.get("validation"))
    return (f"final student: round {final.get('round')} ({_esc(final.get('gguf'))}); best round "
            f"{final.get('best_round')} with {final.get('best_validation_score', 0):.1f} on validation"
            + (f" &middot; <b>{_esc(said)}</b>" if said else "")
            + (f"</p><p class='warn'>{_esc(sentence)}" if sentence else ""))


def _signal_table(rounds: list[tuple[int, RoundRecord]]) -> str:
    """The signal check before each round: what it measured and what it decided, in words."""
    rows = [[k, rec.status if rec.status == "no_signal" else "checked", rec.signal.get("line", "")]
            for k, rec in rounds if rec.signal]
    return ("<h3>Signal check before each round</h3>" + _table(["round", "decision", "what it measured"], rows)) if rows else ""


def _import_note(imported: dict[str, Any] | None) -> str:
    if not imported:
        return ""
    return "<p>" + _esc(
        f"student imported from {Path(imported['source']).name} ({imported['quantization']}) in {imported['seconds']}s; "
        f"fidelity against llama.cpp on that file: top-1 agreement {imported['fidelity']['top1_agreement'] * 100:.1f}% "
        f"over {imported['fidelity']['positions']} positions, largest logit difference "
        f"{imported['fidelity']['max_abs_logit_diff']:.3g}") + "</p>"


def _format_note(run_dir: Path) -> str:
    """How the student's prompts were rendered (round 0's evaluation records it)."""
    path = run_dir / "round-0" / "eval.json"
    described = read_json(path).get("prompt_format") if path.is_file() else None
    return f"<p>prompts: {_esc(described)}</p>" if described else ""


def write_report(run_dir: str | Path) -> Path:
    """RUN_DIR/report.html from the run directory's files: one section per concern, built below."""
    run_dir = Path(run_dir)
    manifest = read_json(run_dir / "manifest.json")
    rounds = list(rounds_of(manifest).items())
    config = (run_dir / "config.yaml").read_text(encoding="utf-8") if (run_dir / "config.yaml").is_file() else "(missing)"
    score_rows = _score_rows(rounds)
    funnels, balances, examples = _synthesis_sections(run_dir, rounds)
    gate_table = _gate_table(rounds)
    disk_rows = _disk_rows(run_dir, rounds, manifest.get("pruned") or {})
    stages = manifest.get("stages", {})
    stage_rows = [[name, s.get("status", ""), s.get("seconds", "-"), "yes" if s.get("skipped") else ""]
                  for name, s in stages.items()]
    commands = manifest.get("commands") or []
    summary = _summary_line(manifest.get("final") or {})
    import_note = _import_note(manifest.get("import")) + _format_note(run_dir)
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>selfguide_lite run {_esc(run_dir.name)}</title>
<style>
body{{font-family:system-ui,sans-serif;margin:2em auto;max-width:1000px;padding:0 1em;color:#1f2933}}
table{{border-collapse:collapse;margin:.5em 0 1.5em}} td,th{{border:1px solid #d5dbe1;padding:4px 8px;text-align:left;font-size:13px;vertical-align:top}}
th{{background:#f3f5f7}} pre{{background:#f3f5f7;padding:1em;overflow:auto;font-size:12px}} .plot{{max-width:100%;display:block;margin:.5em 0}}
.warn{{color:#b42318}} nav a{{margin-right:1em}} h2{{border-bottom:1px solid #d5dbe1;padding-bottom:.2em;margin-top:2em}}
</style></head><body>
<h1>selfguide_lite: {_esc(run_dir.name)}</h1>
<p>method <b>{_esc(manifest.get('method'))}</b> &middot; model <b>{_esc(manifest.get('model'))}</b> &middot;
task <b>{_esc(manifest.get('task') or manifest.get('seed_tasks') or manifest.get('seeds'))}</b></p>
<p>{summary}</p>
<nav><a href="#scores">scores</a><a href="#funnel">data funnel</a><a href="#balance">class balance</a>
<a href="#examples">examples</a><a href="#disk">disk</a><a href="#time">time</a><a href="#config">command &amp; configuration</a></nav>
<h2 id="scores">Scores per round</h2>
{_table(["round", "status", "train rows", "validation exact match", "validation ROUGE-L", "test exact match",
         "test ROUGE-L", "validation, beside the trivial answers", "test, beside the trivial answers", "promoted",
         "GGUF"], score_rows)}
{import_note}
{_signal_table(rounds)}
{gate_table}
{scores_plot(rounds)}
<h2 id="funnel">Data funnel</h2>
{''.join(funnels) or '<p>no synthesis yet</p>'}
<h2 id="balance">Class balance</h2>
{''.join(balances) or '<p>not a classification task, or no synthesis yet</p>'}
<h2 id="examples">Examples kept and dropped</h2>
{''.join(examples) or '<p>no synthesis yet</p>'}
<h2 id="disk">Disk per round</h2>
{_table(["round", "kept (MiB)", "deleted by export.keep (MiB)", "deleted"], disk_rows)}
<h2 id="time">Time per stage</h2>
{_table(["stage", "status", "seconds", "skipped (cached)"], stage_rows)}
{stage_time_plot(stages)}
<h2 id="config">Command and configuration</h2>
<pre>{_esc(chr(10).join(commands) or '(not recorded)')}</pre>
<pre>{_esc(config)}</pre>
</body></html>
"""
    return atomic_write_text(run_dir / "report.html", page)
