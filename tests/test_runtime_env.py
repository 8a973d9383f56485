"""A lean, pinned runtime: requirements/runtime.txt holds exactly the runtime dependencies (no
development tool), at the versions constraints.txt pins, each with its sha256 hashes; pip
installs them with --require-hashes into a fresh environment, refuses a file whose hash
differs (tests/test_install.py: scripts/install-wheel.sh installs them so, and the wheel on
top runs the inventory)."""

from __future__ import annotations

import importlib.metadata as md
import re
from pathlib import Path

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
