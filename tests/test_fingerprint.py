"""inventory.storage.fingerprint: the key (env var or a private file beside the database) and the HMAC."""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
from pathlib import Path

import pytest

from inventory.errors import StoreError, UsageError
from inventory.storage.fingerprint import KEY_ENV, Fingerprinter, key_path, load_key


@pytest.fixture(autouse=True)
def _no_env_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)


def test_key_path_is_beside_the_database() -> None:
    assert key_path(Path("data/inventory.duckdb")) == Path("data/inventory.duckdb.fingerprint-key")
    assert key_path("x.duckdb") == Path("x.duckdb.fingerprint-key")


def test_key_file_created_0600_with_32_random_bytes_and_reused(tmp_path: Path) -> None:
    db = tmp_path / "sub" / "inventory.duckdb"  # the directory does not exist yet
    key = load_key(db)
    path = tmp_path / "sub" / "inventory.duckdb.fingerprint-key"
    assert len(key) == 32
    assert path.read_bytes() == key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_key(db) == key  # reused, not recreated
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temp files left
    assert load_key(tmp_path / "other.duckdb") != key  # another database, another key


def test_env_var_wins_over_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "inventory.duckdb"
    file_key = load_key(db)
    monkeypatch.setenv(KEY_ENV, "fleet-shared-secret-0123456789abcdef")
    assert load_key(db) == b"fleet-shared-secret-0123456789abcdef"
    assert load_key(db) != file_key
    assert load_key(tmp_path / "never.duckdb") == b"fleet-shared-secret-0123456789abcdef"
    assert not key_path(tmp_path / "never.duckdb").exists()  # no file when the env var is set


def test_empty_env_var_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, "")
    with pytest.raises(UsageError, match=KEY_ENV):
        load_key(tmp_path / "inventory.duckdb")


def test_key_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "inventory.duckdb"
    load_key(db)
    path = key_path(db)
    os.chmod(path, 0o644)
    with pytest.raises(StoreError, match=r"chmod 600") as exc:
        load_key(db)
    assert str(path) in str(exc.value)
    os.chmod(path, 0o600)
    assert len(load_key(db)) == 32


def test_empty_key_file_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "inventory.duckdb"
    fd = os.open(key_path(db), os.O_WRONLY | os.O_CREAT, 0o600)
    os.close(fd)
    with pytest.raises(StoreError, match="empty"):
        load_key(db)


def test_fingerprint_format_and_value() -> None:
    fp = Fingerprinter(b"k" * 32)
    expected = hmac.new(b"k" * 32, b"hunter2", hashlib.sha256).hexdigest()[:16]
    assert fp("hunter2") == "hmac-sha256:" + expected
    assert fp("hunter2") == fp("hunter2")
    assert fp("hunter2") != fp("hunter3")
    assert Fingerprinter(b"other-key")("hunter2") != fp("hunter2")
    assert len(fp("")) == len("hmac-sha256:") + 16
    assert fp("\ud800").startswith("hmac-sha256:")  # a lone surrogate (valid JSON) still works
    assert "k" * 32 not in repr(fp)


def test_empty_key_rejected() -> None:
    with pytest.raises(ValueError):
        Fingerprinter(b"")
