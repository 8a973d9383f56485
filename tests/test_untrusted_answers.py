"""A member account's answers are input, not trusted.

- Answers of bounded size (`--max-answer-bytes`, AnswerTooLarge), error messages capped.
- No terminal escapes from AWS data: what is rendered for people shows control characters.
- No credential follows a redirect (UnexpectedRedirect): nothing reaches the other origin.

Everything through the `inventory` CLI against the simulator over real HTTP, both engines,
a real DuckDB file read back.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from helpers import rows
from typer.testing import CliRunner

from inventory.cli import app
from inventory.simulator import Faults, Fleet, Simulator

MakeSimulator = Callable[..., Simulator]
R1, R2 = "us-east-1", "eu-west-2"
KEY = "untrusted-answers-fingerprint-key-0123456789"
MB = 1024 * 1024
MAX_MESSAGE_CHARS = 1024  # model.MAX_MESSAGE_CHARS
HUGE = 50 * MB
ESC_TITLE = "\x1b]0;pwned\x07"  # sets the terminal's title
ESC_RED = "\x1b[31m"  # turns it red


def write_accounts(path: Path, ids: tuple[str, ...]) -> Path:
    lines = ['role_name = "LightsailInventoryReader"']
    for a in ids:
        lines += ["[[accounts]]", f'id = "{a}"']
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def invoke(*args: str) -> Any:
    """`inventory ARGS` in this process; a traceback is a failure, not an exit status."""
    result = CliRunner().invoke(app, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exc_info
    return result


@pytest.fixture
def fleet() -> Fleet:
    return Fleet(3, seed=4, regions=(R1, R2))


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INVENTORY_FINGERPRINT_KEY", KEY)
    monkeypatch.setenv("COLUMNS", "200")


def collect(tmp_path: Path, fleet: Fleet, *extra: str, db: str = "i.duckdb") -> Any:
    config = write_accounts(tmp_path / "a.toml", fleet.account_ids)
    return invoke(
        "collect", "-c", str(config), "--regions", f"{R1},{R2}", "--db", str(tmp_path / db),
        "--no-parquet", *extra,
    )  # fmt: skip


def others_collected(db: Path, fleet: Fleet, failed: set[tuple[str, str]]) -> None:
    """Every target but `failed` scanned ok, with exactly the simulator's services."""
    scans = rows(db, "select account_id, region, status, services from scans")
    assert len(scans) == len(fleet.account_ids) * 2
    for s in scans:
        key = (s["account_id"], s["region"])
        if key in failed:
            assert s["status"] == "failed", s
        else:
            assert s["status"] == "ok", s
            assert s["services"] == len(fleet.services(*key)), s


# --------------------------------------------------------------------------- 4. bounded size


@pytest.mark.parametrize("engine", ["lean", "botocore"])
def test_a_50_mb_answer_fails_its_own_target_after_the_cap_unread(
    tmp_path: Path, fleet: Fleet, make_simulator: MakeSimulator, engine: str
) -> None:
    """Streamed (chunked, no Content-Length): read one byte past the cap, then closed."""
    huge = (fleet.account_ids[0], R1)
    sim = make_simulator(fleet=fleet, faults=Faults(huge_answers={huge}, huge_bytes=HUGE))
    result = collect(tmp_path, fleet, "--engine", engine, "--max-answer-bytes", str(MB))

    assert result.exit_code == 3, result.output
    db = tmp_path / "i.duckdb"
    (err,) = rows(
        db, "select account_id, region, operation, error_code, attempts, message from errors"
    )
    assert (err["account_id"], err["region"]) == huge
    assert (err["operation"], err["error_code"], err["attempts"]) == (
        "GetContainerServices",
        "AnswerTooLarge",
        1,  # the same answer would come again: not retried
    )
    # no more than the cap (+1 byte, to know it is over) was read off the connection...
    assert err["message"] == (
        "the answer went over the 1,048,576 bytes --max-answer-bytes allows: "
        "cut after 1,048,577 bytes, the rest not read"
    )
    # ...and the rest never left the simulator (what it sent is bounded by the socket
    # buffers, far from 50 MB)
    assert sim.operation_stats("GetContainerServices")["huge"] == 1
    assert 1 * MB < sim.huge_bytes_sent < HUGE // 2, sim.huge_bytes_sent
    others_collected(db, fleet, {huge})
    assert "AnswerTooLarge" in result.stdout  # the failures table


@pytest.mark.parametrize("engine", ["lean", "botocore"])
def test_a_huge_assume_role_answer_fails_its_own_account_unread(
    tmp_path: Path, fleet: Fleet, make_simulator: MakeSimulator, engine: str
) -> None:
    """One account's AssumeRole answered with 50 MB: that account fails AnswerTooLarge (once,
    not retried) after the cap, unread past it; every other account is collected."""
    account = fleet.account_ids[1]
    sim = make_simulator(
        fleet=fleet,
        faults=Faults(
            huge_answers={(account, "us-east-1")},  # STS is signed for us-east-1 here
            huge_operations=frozenset({"AssumeRole"}),
            huge_bytes=HUGE,
        ),
    )
    result = collect(tmp_path, fleet, "--engine", engine, "--max-answer-bytes", str(MB))

    assert result.exit_code == 3, result.output
    db = tmp_path / "i.duckdb"
    (err,) = rows(db, "select account_id, region, operation, error_code, attempts from errors")
    assert err == {
        "account_id": account,
        "region": None,
        "operation": "AssumeRole",
        "error_code": "AnswerTooLarge",
        "attempts": 1,
    }
    stats = sim.operation_stats("AssumeRole")
    assert (stats["huge"], stats["calls"]) == (1, len(fleet.account_ids))  # one per account
    assert 1 * MB < sim.huge_bytes_sent < HUGE // 2, sim.huge_bytes_sent
    others_collected(db, fleet, {(account, R1), (account, R2)})


def test_an_answer_whose_length_is_over_the_default_cap_is_not_read(
    tmp_path: Path, fleet: Fleet, make_simulator: MakeSimulator
) -> None:
    """Content-Length over the default cap (32 MiB): refused before a byte of its body."""
    huge = (fleet.account_ids[1], R2)
    sim = make_simulator(
        fleet=fleet, faults=Faults(huge_answers={huge}, huge_bytes=HUGE, huge_with_length=True)
    )
    result = collect(tmp_path, fleet)

    assert result.exit_code == 3, result.output
    db = tmp_path / "i.duckdb"
    (err,) = rows(db, "select account_id, region, error_code, message from errors")
    assert (err["account_id"], err["region"], err["error_code"]) == (*huge, "AnswerTooLarge")
    assert err["message"] == (
        "the answer is 52,428,800 bytes (its Content-Length), over the 33,554,432 "
        "--max-answer-bytes allows: not read"
    )
    assert sim.huge_bytes_sent < HUGE // 2, sim.huge_bytes_sent
    others_collected(db, fleet, {huge})


def test_deep_calls_are_bounded_too(
    tmp_path: Path, fleet: Fleet, make_simulator: MakeSimulator
) -> None:
    """--deep: GetContainerImages (through the aiobotocore client) answers 50 MB."""
    account, region = next(
        (a, r) for a in fleet.account_ids for r in (R1, R2) if fleet.services(a, r)
    )
    sim = make_simulator(
        fleet=fleet,
        faults=Faults(
            huge_answers={(account, region)},
            huge_operations=frozenset({"GetContainerImages"}),
            huge_bytes=HUGE,
        ),
    )
    result = collect(tmp_path, fleet, "--deep", "--max-answer-bytes", str(MB))

    assert result.exit_code == 0, result.output  # a deep call never fails its target
    db = tmp_path / "i.duckdb"
    errors = rows(db, "select account_id, region, operation, error_code, message from errors")
    assert errors and {(e["account_id"], e["region"]) for e in errors} == {(account, region)}
    assert {(e["operation"], e["error_code"]) for e in errors} == {
        ("GetContainerImages", "AnswerTooLarge")
    }
    assert all("cut after 1,048,577 bytes" in e["message"] for e in errors)
    calls = sim.operation_stats("GetContainerImages")["huge"]
    assert calls == len(errors) and sim.huge_bytes_sent < calls * HUGE // 2
    others_collected(db, fleet, set())


@pytest.mark.parametrize("engine", ["lean", "botocore"])
def test_a_5_mb_error_message_is_stored_logged_and_printed_cut(
    tmp_path: Path, fleet: Fleet, make_simulator: MakeSimulator, engine: str
) -> None:
    bad = (fleet.account_ids[2], R1)
    make_simulator(fleet=fleet, faults=Faults(huge_errors={bad}, huge_error_bytes=5 * MB))
    result = collect(tmp_path, fleet, "--engine", engine, "--log-format", "json")

    assert result.exit_code == 3, result.output
    db = tmp_path / "i.duckdb"
    (err,) = rows(db, "select account_id, region, error_code, message from errors")
    assert (err["account_id"], err["region"], err["error_code"]) == (*bad, "AccessDeniedException")
    message = err["message"]
    assert message.startswith(f"GetContainerServices refused in {R1}: xxx")
    assert message.endswith(f"… [cut: {5 * MB:,} characters in all]")
    assert len(message) == MAX_MESSAGE_CHARS
    # the log line says no more than that, and nothing printed is longer
    logged = [
        json.loads(line)
        for line in (result.stdout + result.stderr).splitlines()
        if line.startswith("{")
    ]
    (failed,) = [line for line in logged if line.get("event") == "target_failed"]
    assert failed["error_message"] == message
    assert max(len(line) for line in (result.stdout + result.stderr).splitlines()) < 2000
    # the report copies the stored (cut) message
    html = tmp_path / "r.html"
    assert invoke("report", "--html", str(html), "--db", str(db)).exit_code == 0
    assert message[:200] in html.read_text(encoding="utf-8")
    assert html.stat().st_size < 200_000


def test_max_answer_bytes_is_bounded(tmp_path: Path, fleet: Fleet) -> None:
    for value, problem in (
        ("1000", "must be at least 65536"),
        (str(4 * 1024**3), "must be at most 1,073,741,824"),
    ):
        result = collect(tmp_path, fleet, "--max-answer-bytes", value)
        assert result.exit_code == 2, result.output
        assert result.stderr.strip() == f"error: --max-answer-bytes {value}: {problem}"


def test_cap_message() -> None:
    from inventory.model import cap_message

    assert cap_message("short") == "short"
    text = "é" * 3000
    mark = "… [cut: 3,000 characters in all]"
    assert cap_message(text) == "é" * (MAX_MESSAGE_CHARS - len(mark)) + mark
    assert cap_message(cap_message(text)) == cap_message(text)


# --------------------------------------------------------------------------- 9. redirects


class _Recorder(BaseHTTPRequestHandler):
    """Another origin: records every request it gets, answers like Lightsail would."""

    seen: list[dict[str, Any]]

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.seen.append(
            {"path": self.path, "headers": dict(self.headers), "body": self.rfile.read(length)}
        )
        body = b'{"containerServices":[]}'
        self.send_response(200)
        self.send_header("Content-Type", "application/x-amz-json-1.1")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    seen: list[dict[str, Any]] = []
    handler = type("Recorder", (_Recorder,), {"seen": seen})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()
    server.server_close()
    thread.join(10)


@pytest.mark.parametrize("engine", ["lean", "botocore"])
def test_a_lightsail_redirect_is_not_followed(
    tmp_path: Path,
    fleet: Fleet,
    make_simulator: MakeSimulator,
    recorder: tuple[str, list[dict[str, Any]]],
    engine: str,
) -> None:
    url, seen = recorder
    moved = (fleet.account_ids[0], R2)
    sim = make_simulator(fleet=fleet, faults=Faults(redirect_regions={moved}, redirect_to=url))
    result = collect(tmp_path, fleet, "--engine", engine)

    assert result.exit_code == 3, result.output
    assert seen == []  # no request, so no signature and no X-Amz-Security-Token, went there
    assert sim.operation_stats("GetContainerServices")["redirected"] == 1
    db = tmp_path / "i.duckdb"
    (err,) = rows(
        db, "select account_id, region, operation, error_code, attempts, message from errors"
    )
    assert (err["account_id"], err["region"], err["operation"]) == (*moved, "GetContainerServices")
    assert (err["error_code"], err["attempts"]) == ("UnexpectedRedirect", 1)
    assert err["message"] == (
        f"HTTP 307 redirect to '{url}/' not followed: Lightsail, STS and Organizations "
        "do not redirect, so nothing was sent there"
    )
    others_collected(db, fleet, {moved})


@pytest.mark.parametrize("engine", ["lean", "botocore"])
def test_an_sts_redirect_is_not_followed(
    tmp_path: Path,
    fleet: Fleet,
    make_simulator: MakeSimulator,
    recorder: tuple[str, list[dict[str, Any]]],
    engine: str,
) -> None:
    """AssumeRole answered 307: every account fails, not a byte goes to the other origin."""
    url, seen = recorder
    make_simulator(fleet=fleet, faults=Faults(redirect_sts=True, redirect_to=url))
    result = collect(tmp_path, fleet, "--engine", engine)

    assert result.exit_code == 1, result.output
    assert seen == []
    db = tmp_path / "i.duckdb"
    errors = rows(db, "select account_id, region, operation, error_code from errors")
    assert sorted(e["account_id"] for e in errors) == sorted(fleet.account_ids)
    assert {(e["region"], e["operation"], e["error_code"]) for e in errors} == {
        (None, "AssumeRole", "UnexpectedRedirect")
    }


# --------------------------------------------------------------------------- 5. escapes


def test_visible() -> None:
    from inventory.terminal import visible

    assert visible("nginx:1.27") == "nginx:1.27"
    assert (
        visible(f"a{ESC_TITLE}b\nc\td\x9be\u202ef") == "a\\x1b]0;pwned\\x07b\\nc\\td\\x9be\\u202ef"
    )


def _plant_escape_image(fleet: Fleet) -> tuple[str, str, str, str]:
    """Give one container of the fleet an image name with ESC sequences in it; returns
    (account, region, service, the new image)."""
    for account in fleet.account_ids:
        for region in (R1, R2):
            for svc in fleet.services(account, region):
                containers = (svc.get("currentDeployment") or {}).get("containers") or {}
                for container in containers.values():
                    image = f"{ESC_TITLE}{ESC_RED}evil:latest"
                    container["image"] = image
                    return account, region, svc["containerServiceName"], image
    raise AssertionError("the fleet has no container")


def test_escapes_from_aws_data_are_shown_not_obeyed(
    tmp_path: Path, fleet: Fleet, make_simulator: MakeSimulator
) -> None:
    denied = (fleet.account_ids[1], R2)
    message = f"{ESC_TITLE}denied{ESC_RED}\nFAKE 2026-01-01 INFO all is well"
    sim = make_simulator(
        fleet=fleet, faults=Faults(denied_regions={denied}, denied_message=message)
    )
    db = tmp_path / "i.duckdb"
    first = collect(tmp_path, fleet)  # before the image changes: diff has something to show
    assert first.exit_code == 3, first.output
    account, region, service, image = _plant_escape_image(fleet)
    sim.set_fleet(fleet)  # serve the changed answers
    result = collect(tmp_path, fleet)
    assert result.exit_code == 3, result.output

    # the stored data stays exact
    (got,) = rows(
        db,
        "select distinct image from latest_containers where account_id = "
        f"'{account}' and region = '{region}' and service_name = '{service}' and "
        "image like '%evil%'",
    )
    assert got["image"] == image
    errors = rows(db, "select distinct message from errors")
    assert [e["message"] for e in errors] == [message]

    # what people read shows the controls: failures table, log lines
    for out in (result.stdout, result.stderr):
        assert "\x1b" not in out and "\x07" not in out
    assert "\\x1b]0;pwned\\x07denied" in result.stdout  # the failures table's message column

    # query, diff and runs tables
    query = invoke(
        "query", "--db", str(db), "select image from latest_containers where image like '%evil%'"
    )
    assert query.exit_code == 0, query.output
    assert "\x1b" not in query.stdout and "\\x1b]0;pwned\\x07\\x1b[31mevil:latest" in query.stdout
    diff = invoke("diff", "--db", str(db))
    assert diff.exit_code == 0, diff.output
    assert "\x1b" not in diff.stdout and "\\x1b[31mevil:latest" in diff.stdout
    errors_table = invoke("query", "--db", str(db), "select message from errors")
    assert "\x1b" not in errors_table.stdout and "\\x1b]0;pwned" in errors_table.stdout
    runs = invoke("runs", "--db", str(db))
    assert runs.exit_code == 0 and "\x1b" not in runs.stdout

    # JSON stays JSON, with the exact value
    as_json = invoke(
        "query", "--db", str(db), "--format", "json",
        "select image from latest_containers where image like '%evil%'",
    )  # fmt: skip
    assert json.loads(as_json.stdout) == [{"image": image}]
    diff_json = invoke("diff", "--db", str(db), "--format", "json")
    changes = json.loads(diff_json.stdout)["changes"]
    assert [c["kind"] for c in changes] == ["image"] and image in changes[0].values()


def test_text_log_lines_show_escapes(capsys: pytest.CaptureFixture[str]) -> None:
    """A log line is one line, whatever AWS's text holds (a newline cannot forge another)."""
    import logging

    from inventory import logs

    with logs.configured("text"):
        logs.event(
            logging.getLogger("inventory.run"),
            logging.WARNING,
            "target_failed",
            f"failed: {ESC_RED}Evil\n2026-01-01T00:00:00.000Z INFO    all is well",
        )
    (line,) = capsys.readouterr().err.splitlines()
    assert line.endswith(
        "WARNING failed: \\x1b[31mEvil\\n2026-01-01T00:00:00.000Z INFO    all is well"
    )


def test_the_error_line_shows_escapes(
    tmp_path: Path, fleet: Fleet, make_simulator: MakeSimulator
) -> None:
    """`--regions discover` refused with an ESC-laden message: the one-line `error:`."""
    message = f"{ESC_TITLE}no{ESC_RED} regions for you"
    make_simulator(fleet=fleet, faults=Faults(denied_regions={("*", R1)}, denied_message=message))
    config = write_accounts(tmp_path / "a.toml", fleet.account_ids)
    result = invoke(
        "collect", "-c", str(config), "--regions", "discover", "--db", str(tmp_path / "d.duckdb"),
        "--no-parquet",
    )  # fmt: skip
    assert result.exit_code not in (0, 3), result.output
    assert "\x1b" not in result.stderr and "\x07" not in result.stderr
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert "\\x1b]0;pwned\\x07no\\x1b[31m regions for you" in line


def test_doctor_shows_escapes(tmp_path: Path, fleet: Fleet, make_simulator: MakeSimulator) -> None:
    message = f"{ESC_TITLE}not here{ESC_RED}\nok    region       all fine"
    make_simulator(fleet=fleet, faults=Faults(denied_regions={("*", R2)}, denied_message=message))
    config = write_accounts(tmp_path / "a.toml", fleet.account_ids)
    result = invoke("doctor", "-c", str(config), "--regions", f"{R1},{R2}", "--sample", "0")
    assert result.exit_code == 1, result.output
    assert "\x1b" not in result.stdout and "\x07" not in result.stdout
    assert "\\x1b]0;pwned\\x07not here\\x1b[31m\\nok    region       all fine" in result.stdout
    # the forged check line stays inside the real one
    assert not any(line.startswith("ok    region") for line in result.stdout.splitlines())
