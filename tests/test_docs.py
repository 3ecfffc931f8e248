"""The README and docs/ as a reader meets them: every relative link resolves, the README's two commands
are the ones CI and the demo run, and the README stays short enough to read."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def relative_links(path: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)  # code is not links
    return [t for t in LINK.findall(text) if not re.match(r"[a-z]+:", t) and not t.startswith("#")]


def test_every_relative_link_resolves():
    checked = 0
    for doc in DOCS:
        for target in relative_links(doc):
            checked += 1
            assert (doc.parent / target.split("#", 1)[0]).exists(), f"{doc.relative_to(REPO)} links to missing {target}"
    assert checked >= 10  # the README links to every docs page


def test_readme_commands_are_the_ones_ci_and_the_demo_run():
    blocks = re.findall(r"```bash\n(.*?)```", (REPO / "README.md").read_text(encoding="utf-8"), flags=re.S)
    demo, tests = blocks[0].strip(), blocks[1].strip()
    assert demo.endswith("python -m selfguide_lite loop") and "pip install torch==2.13.0" in demo
    ci = [line for line in (REPO / ".ci" / "run").read_text().splitlines() if line and not line.startswith(("#", "set ", "cd ", "export "))]
    assert ci[-1].strip() == tests


def test_readme_is_short_and_every_docs_page_is_linked_from_it():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 220
    linked = {Path(t.split("#", 1)[0]).name for t in relative_links(REPO / "README.md")}
    assert {p.name for p in DOCS[1:]} <= linked


def test_the_readme_task_example_loads(tmp_path):
    """The README's own-task example is a task file the loader accepts as written."""
    from selfguide_lite.tasks import load_task

    block = re.search(r"```yaml\n(.*?)```", (REPO / "README.md").read_text(encoding="utf-8"), flags=re.S).group(1)
    path = tmp_path / "my_task.yaml"
    path.write_text(block, encoding="utf-8")
    task = load_task(path)
    assert task.is_classification and task.labels == ["sports", "weather", "food"] and len(task.demos) == 3
