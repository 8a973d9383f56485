"""The repository explains itself: no text cites a document outside it, the run id and shard
rules have one home, and helper names say what they do.

Read from the files as they are in the repository (the same sources `make lint` reads).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# A reference to something the repository does not hold: another repository's shared
# folder, the engineering notes, an issue tracker's numbers.
OUTSIDE = re.compile(
    r"\.\./shared|ENGINEERING\.md|\bCONTRACT\.md|\b[Ii]ssue #?\d|\b[Ii]ssues? \d+,? (?:item|point)"
)
# Names that say nothing: each was a different helper in a different module.
VAGUE = {"_plain", "_r", "_us", "_n"}


def texts() -> list[Path]:
    paths = [ROOT / "README.md", *ROOT.glob("docs/*.md"), *ROOT.glob("sql/**/*.sql")]
    paths += [*ROOT.glob("deploy/**/*.md"), *ROOT.glob("deploy/**/*.yaml")]
    for folder in ("inventory", "tests", "benchmarks", "scripts"):
        paths += (ROOT / folder).rglob("*.py")
    paths += (ROOT / "benchmarks").glob("*.md")
    return sorted(p for p in paths if "results" not in p.parts)


def test_no_text_cites_a_document_outside_the_repository() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
        for path in texts()
        if path.name != "test_layout.py"
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if OUTSIDE.search(line)
    ]
    assert found == []
    outside_doc = "see ../" + "shared/" + "NOTES.md"  # built here: this file names none
    assert OUTSIDE.search(outside_doc) and OUTSIDE.search('"""Issue #3')


def test_helpers_have_names_that_say_what_they_do() -> None:
    found = []
    for path in sorted((ROOT / "inventory").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name in VAGUE:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: def {node.name}")
    assert found == []


def test_run_ids_and_shards_have_one_home() -> None:
    """Only plan/runid.py defines the run id's format, its parse and the shards."""
    owners: dict[str, list[str]] = {}
    names = {"check_run_id", "run_started_at", "new_run_id", "Shard", "shard_of", "parse_shard"}
    for path in sorted((ROOT / "inventory").rglob("*.py")):
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.FunctionDef | ast.ClassDef) and node.name in names:
                owners.setdefault(node.name, []).append(str(path.relative_to(ROOT)))
    assert owners == {name: ["inventory/plan/runid.py"] for name in names}


PRIVATE_IMPORTS_LEFT: set[str] = set()


def test_no_module_imports_another_modules_private_names() -> None:
    found = []
    for path in sorted((ROOT / "inventory").rglob("*.py")):
        where = str(path.relative_to(ROOT))
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("inventory"):
                private = [
                    a.name
                    for a in node.names
                    if a.name.startswith("_") and not a.name.endswith("__")
                ]
                if private and where not in PRIVATE_IMPORTS_LEFT:
                    found.append(f"{where}:{node.lineno}: {node.module}: {', '.join(private)}")
    assert found == []
