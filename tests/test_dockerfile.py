"""The Dockerfile, parsed (no image can be built on this machine): a slim Python base pinned by
tag, the install steps are scripts/install-wheel.sh (the script tests/test_install.py runs) run
in a build stage, and the final stage is that virtual environment only, run by a fixed
non-root user with ENTRYPOINT exactly ["inventory"]. The build context (.dockerignore) holds
what the script reads and nothing else of the checkout. And the build stage, done by hand
here (its COPYs from the filtered context into an empty folder, then its RUN), works, and so
does the final stage's ENTRYPOINT + CMD.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers import install_wheel

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = "scripts/install-wheel.sh"
VENV = "/opt/inventory"


@dataclasses.dataclass
class Stage:
    """One FROM … of a Dockerfile: its base image (ARGs resolved), name and instructions."""

    image: str
    name: str | None
    instructions: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [rest for kw, rest in self.instructions if kw == keyword]


def logical_lines(text: str) -> list[str]:
    """The Dockerfile's instructions, one line each: comments and blank lines dropped,
    lines ending in a backslash joined with the next (comment lines inside them skipped)."""
    lines, pending = [], ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    assert not pending, f"the Dockerfile ends inside a continued line: {pending!r}"
    return lines


def parse(text: str) -> list[Stage]:
    """The stages of a Dockerfile. ARGs before the first FROM are substituted in FROM lines
    (`${NAME}` or `$NAME`), as Docker does."""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical_lines(text):
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "FROM":
            image = re.sub(r"\$\{?(\w+)\}?", lambda m: args[m[1]], rest.split()[0])
            words = rest.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(image, name))
        elif not stages and keyword == "ARG":
            key, _, default = rest.partition("=")
            args[key] = default
        else:
            assert stages, f"{keyword} before the first FROM"
            stages[-1].instructions.append((keyword, rest))
    return stages


def exec_form(rest: str) -> list[str]:
    """An instruction's JSON (exec) form, e.g. ENTRYPOINT ["inventory"]; fails on the shell
    form, which would run the program under /bin/sh and lose its signals."""
    value = json.loads(rest)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), rest
    return value


def included(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore keeps `path` in the build context: the last pattern that
    matches the path or one of its parent folders decides; `!` re-includes."""
    parts = path.split("/")
    keep = True
    for pattern in patterns:
        negated = pattern.startswith("!")
        bare = pattern.lstrip("!").rstrip("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatchcase(p, bare) for p in prefixes):
            keep = negated
    return keep


def dockerignore() -> list[str]:
    return [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]


def copy_instruction(rest: str, workdir: Path, patterns: list[str]) -> None:
    """`COPY SRC... DEST` into `workdir` as Docker does it from the build context: a folder's
    contents go into DEST, a file into DEST/ (DEST ends in '/'), files .dockerignore leaves
    out of the context are not there to copy."""
    *sources, dest = shlex.split(rest)
    target = workdir / dest
    for source in sources:
        top = ROOT / source.rstrip("/")
        files = [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file())
        for file in files:
            relative = file.relative_to(ROOT).as_posix()
            if not included(relative, patterns):
                continue
            inside = file.name if file == top else file.relative_to(top).as_posix()
            (target / inside).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(file, target / inside)


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse((ROOT / "Dockerfile").read_text(encoding="utf-8"))


def test_the_base_is_a_slim_python_pinned_by_tag(stages: list[Stage]) -> None:
    assert len(stages) == 2
    # the Python the runtime requirements were compiled for (requirements/runtime.txt)
    compiled = re.search(
        r"pip-compile with Python (3\.\d+)", (ROOT / "requirements" / "runtime.txt").read_text()
    )
    assert compiled is not None
    for stage in stages:
        found = re.fullmatch(r"python:(3\.\d+)\.\d+-slim-[a-z]+", stage.image)
        assert found is not None, f"not a slim python pinned to a release: {stage.image}"
        assert found[1] == compiled[1]
    # one image for both: the virtual environment refers to its Python by path
    assert stages[0].image == stages[1].image


def test_the_build_stage_runs_the_install_script(stages: list[Stage]) -> None:
    build = stages[0]
    runs = [shlex.split(rest) for rest in build.all("RUN")]
    assert runs == [[SCRIPT, VENV]]  # the install steps: that one script, nothing else
    # and the script reads only what the stage copied into its working folder
    (workdir,) = build.all("WORKDIR")
    assert workdir == "/src"
    copied = {source.rstrip("/") for rest in build.all("COPY") for source in shlex.split(rest)[:-1]}
    read = set(re.findall(r'"\$repo/([\w./-]+)"', (ROOT / SCRIPT).read_text()))
    assert {"pyproject.toml", "requirements/runtime.txt", "inventory", "sql"} <= read
    for path in [*read, SCRIPT]:
        assert any(path == c or path.startswith(c + "/") for c in copied), path


def test_the_final_stage_is_the_venv_run_by_a_fixed_non_root_user(stages: list[Stage]) -> None:
    build, final = stages
    assert final.all("RUN") and not any(SCRIPT in r for r in final.all("RUN"))
    assert final.all("COPY") == [f"--from={build.name} {VENV} {VENV}"]
    (user,) = final.all("USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0 and gid.isdigit() and int(gid) != 0
    (useradd,) = final.all("RUN")
    assert f"--uid {uid}" in useradd and f"--gid {gid}" in useradd
    # the user comes last: nothing after it runs as root
    assert [kw for kw, _ in final.instructions][-3:] == ["USER", "ENTRYPOINT", "CMD"]
    (entrypoint,) = final.all("ENTRYPOINT")
    assert exec_form(entrypoint) == ["inventory"]
    (cmd,) = final.all("CMD")
    assert exec_form(cmd) == ["--help"]
    env = " ".join(final.all("ENV"))
    assert f"PATH={VENV}/bin:" in env and "HOME=/home/" in env
    # no secret is baked in: no key, token or password in an ENV or ARG of either stage
    for stage in stages:
        for keyword in ("ENV", "ARG"):
            for rest in stage.all(keyword):
                assert not re.search(r"KEY|TOKEN|SECRET|PASSWORD|AWS_", rest, re.I), rest


def test_the_build_context_is_what_the_script_reads() -> None:
    patterns = dockerignore()
    for needed in ("pyproject.toml", "README.md", "requirements/runtime.txt",
                   "inventory/cli.py", "sql/queries/monthly_cost.sql", SCRIPT):  # fmt: skip
        assert (ROOT / needed).exists() and included(needed, patterns), needed
    for kept_out in (".venv/bin/python", "data/demo.duckdb", "data/parquet/runs/x.parquet",
                     ".git/config", "tests/conftest.py", "benchmarks/run.py",
                     "inventory/__pycache__/cli.cpython-311.pyc", "data/.inventory-key"):  # fmt: skip
        assert not included(kept_out, patterns), kept_out


@pytest.mark.slow
def test_the_build_stage_done_by_hand_makes_a_working_inventory(
    tmp_path: Path, stages: list[Stage]
) -> None:
    build, final = stages
    (workdir,) = build.all("WORKDIR")
    src = tmp_path / workdir.lstrip("/")
    src.mkdir()
    for rest in build.all("COPY"):
        copy_instruction(rest, src, dockerignore())
    assert not (src / "tests").exists() and (src / "inventory" / "cli.py").is_file()
    (run,) = build.all("RUN")
    script, venv = shlex.split(run)
    opt = tmp_path / venv.lstrip("/")
    done = install_wheel(src / script, opt, cwd=src)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "== ok:" in done.stdout and ": complete" in done.stdout  # the demo ran in the build
    # `docker run IMAGE`: ENTRYPOINT + CMD, found on the final stage's PATH
    (entrypoint,), (cmd,) = final.all("ENTRYPOINT"), final.all("CMD")
    program, *args = exec_form(entrypoint) + exec_form(cmd)
    path = re.search(r"PATH=(\S+?):", " ".join(final.all("ENV")))
    assert path is not None and path[1] == venv + "/bin"
    shown = subprocess.run(
        [str(opt / "bin" / program), *args], capture_output=True, text=True, timeout=120
    )
    assert shown.returncode == 0, shown.stderr
    assert "collect" in shown.stdout and "Example" in shown.stdout
