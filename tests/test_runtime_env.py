"""A lean, pinned runtime: requirements/runtime.txt holds exactly the runtime dependencies (no
development tool), at the versions constraints.txt pins, each with its sha256 hashes; pip
installs them with --require-hashes into a fresh environment, refuses a file whose hash
differs, and the wheel installed on top runs the inventory."""

from __future__ import annotations

import importlib.metadata as md
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
RUNTIME = ROOT / "requirements" / "runtime.txt"
DEV_TOOLS = {"pytest", "pytest-asyncio", "moto", "flask", "docker", "mypy", "ruff", "pyinstrument"}


def pins(path: Path) -> dict[str, tuple[str, list[str]]]:
    """{name: (version, sha256 hashes)} of a requirements file (`name==version \\ --hash=...`)."""
    out: dict[str, tuple[str, list[str]]] = {}
    text = re.sub(r"\\\n\s*", " ", path.read_text(encoding="utf-8"))
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        spec, *options = line.split()
        name, _, version = spec.partition("==")
        hashes = [o.removeprefix("--hash=sha256:") for o in options if o.startswith("--hash=")]
        out[canonicalize_name(name)] = (version, hashes)
    return out


def runtime_closure(dist: str = "lightsail-inventory") -> set[str]:
    """The distributions the package needs at run time (no extras), from installed metadata."""
    seen: set[str] = set()
    todo = [dist]
    while todo:
        name = canonicalize_name(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        for text in md.requires(name) or ():
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return seen - {canonicalize_name(dist)}


def test_runtime_requirements_are_the_runtime_closure_pinned_and_hashed() -> None:
    runtime = pins(RUNTIME)
    assert set(runtime) == runtime_closure() | {"setuptools"}
    assert not set(runtime) & DEV_TOOLS
    dev = {name: version for name, (version, _) in pins(ROOT / "constraints.txt").items()}
    for name, (version, hashes) in runtime.items():
        assert version == dev[name], name  # the development environment tests these versions
        assert hashes and all(re.fullmatch(r"[0-9a-f]{64}", h) for h in hashes), name
    # setuptools is current in both environments and as the build backend's floor
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert f'requires = ["setuptools>={runtime["setuptools"][0]}"]' in pyproject


@pytest.mark.slow
def test_a_fresh_environment_installs_the_wheel_with_hashes_only(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    bin_ = venv / "bin"

    def pip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(bin_ / "python"), "-m", "pip", "--disable-pip-version-check", *args],
            capture_output=True,
            text=True,
            check=check,
        )

    # every file pip takes is checked against the sha256 pinned for it
    pip("install", "-q", "--no-compile", "--require-hashes", "--no-deps", "-r", str(RUNTIME))
    # ... and one that does not match is refused
    version, _ = pins(RUNTIME)["six"]
    bad = tmp_path / "bad.txt"
    bad.write_text(f"six=={version} --hash=sha256:{'0' * 64}\n", encoding="utf-8")
    refused = pip("install", "--require-hashes", "--no-deps", "--force-reinstall", "--no-cache-dir",
                  "-r", str(bad), check=False)  # fmt: skip
    assert refused.returncode != 0 and "DO NOT MATCH THE HASHES" in refused.stderr

    # the wheel, built from a copy of the source, installed without touching an index
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(
        ROOT / "inventory", src / "inventory", ignore=shutil.ignore_patterns("__pycache__")
    )
    pip("wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(src))
    (wheel,) = (tmp_path / "dist").glob("lightsail_inventory-*.whl")
    pip("install", "-q", "--no-deps", "--no-index", str(wheel))
    assert "No broken requirements" in pip("check").stdout
    installed = {canonicalize_name(line.split("==")[0]) for line in pip("freeze").stdout.split()}
    assert not installed & DEV_TOOLS
    assert "lightsail-inventory" in installed

    demo = subprocess.run(
        [str(bin_ / "inventory"), "demo", "--accounts", "3", "--latency-ms", "0",
         "--db", str(tmp_path / "demo.duckdb"), "--parquet-dir", str(tmp_path / "lake")],
        capture_output=True, text=True, cwd=tmp_path, check=False,
    )  # fmt: skip
    assert demo.returncode == 0, demo.stderr
    assert "complete" in demo.stdout and (tmp_path / "demo.duckdb").is_file()
