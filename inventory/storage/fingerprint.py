"""Fingerprints of environment values: the only form in which a value may leave the collector.

`hmac-sha256:` + the first 16 hex digits of HMAC-SHA256(key, value): a changed value shows as a
changed fingerprint across runs, the value itself is never stored.

The same goes for the values of secret-looking container command arguments (`redact_command`,
by the secret-like rule `SECRET_NAME_PATTERN`), and for what the lake gets from a store that
holds values (`protect_batch`, unless the user asked for `--export-env-values`).

The key (docs/contract.md) comes from the environment variable `INVENTORY_FINGERPRINT_KEY` when it is
set (shards of one fleet share it; its UTF-8 bytes are the key), else from a file beside the
database, `<db>.fingerprint-key`, created on first use with 32 random bytes and mode 0600.

Decisions:
- The file is created atomically: written in full to a private temporary file (O_CREAT|O_EXCL,
  mode 0600), then hard-linked into place, so a concurrent collect never reads a half-written key
  and two collects racing on first use end up with the same key (the loser reads the winner's).
- A key file that group or others may read or write is refused with a StoreError naming the file
  and the fix (`chmod 600`): a key others can read makes fingerprints of short values guessable.
- An empty key file, or `INVENTORY_FINGERPRINT_KEY` set but empty, is refused too (an empty key
  would silently make every shard's fingerprints differ from the fleet's, or be trivially known).
- Key material shorter than MIN_KEY_BYTES (32: the variable's UTF-8 bytes, or the file's bytes,
  used as they are so existing fingerprints do not change) is a UsageError that says how to
  make a key: a short key makes the fingerprints of short values guessable.
- The key file is never followed through a symbolic link (O_NOFOLLOW; a dangling link too) and
  must belong to the user who runs the tool: a key someone else controls is refused.
"""

from __future__ import annotations

import contextlib
import errno
import hmac
import os
import re
import secrets
import stat
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from inventory.errors import StoreError, UsageError
from inventory.storage.files import make_dirs, refuse_link

KEY_ENV = "INVENTORY_FINGERPRINT_KEY"
KEY_SUFFIX = ".fingerprint-key"
KEY_BYTES = 32
MIN_KEY_BYTES = 32
MAKE_KEY = "python -c 'import secrets; print(secrets.token_hex(32))'"
PREFIX = "hmac-sha256:"
DIGITS = 16
FINGERPRINT_RE = re.compile(re.escape(PREFIX) + f"[0-9a-f]{{{DIGITS}}}")

# What looks like a secret, by name: a case-insensitive substring match of this pattern
# (API_KEY, APIKEY, db_password, --auth-token all match). One home: flatten and the lake
# export use it for `command` arguments; the named query sql/queries/secret_like_env_names.sql
# binds it as the default of its `$pattern` parameter (queries.py, `{secret_like_names}`).
SECRET_NAME_PATTERN = (
    "PASSWORD|PASSWD|PASSPHRASE|SECRET|TOKEN|CREDENTIAL|PRIVATE|API_?KEY|ACCESS_?KEY|KEY|DSN|AUTH"
)
_SECRET_NAME = re.compile(SECRET_NAME_PATTERN)  # matched against upper(name), as the query does
# `--name=value`, `-name=value`, `NAME=value` (one word), and `--name` / `-name` alone.
_ASSIGNMENT = re.compile(r"(-{0,2}([A-Za-z_][A-Za-z0-9_.-]*)=)(.*)", re.DOTALL)
_OPTION = re.compile(r"-{1,2}([A-Za-z_][A-Za-z0-9_.-]*)")
_WHITESPACE = re.compile(r"(\s+)")


def is_secret_name(name: str) -> bool:
    """True when `name` looks like it names a secret (the SECRET_NAME_PATTERN rule)."""
    return _SECRET_NAME.search(name.upper()) is not None


def redact_command(command: list[object], fingerprint: Callable[[str], str]) -> list[object] | None:
    """`command` with the values of secret-looking arguments replaced by their fingerprints,
    or None when there is nothing to replace. The forms (NAME looks secret-like by
    `is_secret_name`):

    - `--NAME=value`, `-NAME=value` and `NAME=value`: the value after the first `=`;
    - `--NAME value`, `-NAME value`: the next argument, unless it starts with `-`;
    - the same forms inside one argument that holds several words (`sh -c "TOKEN=x ./run"`),
      word by word, the whitespace kept.

    A value that already is a fingerprint is kept, so applying it again changes nothing.
    Items that are not strings are left as they are (flatten reports them)."""
    try:  # the common case, checked in one search: nothing in it looks secret-like
        text = "\n".join(command)  # type: ignore[arg-type]
    except TypeError:
        text = "\n".join(arg for arg in command if isinstance(arg, str))
    if _SECRET_NAME.search(text.upper()) is None:
        return None
    out = list(command)
    changed = _redact_words(out, fingerprint, words_of=True)
    return out if changed else None


def _redact_words(
    words: list[object], fingerprint: Callable[[str], str], words_of: bool = False
) -> bool:
    """Redact in place; True when something changed. `words_of`: an item holding whitespace
    (that is not the value of the option before it) is redacted word by word."""
    changed = False
    secret_next = False
    for i, word in enumerate(words):
        if word.__class__ is not str:
            secret_next = False
            continue
        assert isinstance(word, str)
        if secret_next and not word.startswith("-"):
            secret_next = False
            if not FINGERPRINT_RE.fullmatch(word):
                words[i] = fingerprint(word)
                changed = True
            continue
        secret_next = False
        if words_of and _WHITESPACE.search(word):
            parts = _WHITESPACE.split(word)
            inner: list[object] = list(parts[0::2])
            if _redact_words(inner, fingerprint):
                parts[0::2] = inner
                words[i] = "".join(parts)
                changed = True
            continue
        m = _ASSIGNMENT.fullmatch(word)
        if m is not None:
            if is_secret_name(m[2]) and not FINGERPRINT_RE.fullmatch(m[3]):
                words[i] = m[1] + fingerprint(m[3])
                changed = True
            continue
        m = _OPTION.fullmatch(word)
        secret_next = m is not None and is_secret_name(m[1])
    return changed


def key_path(db_path: str | os.PathLike[str]) -> Path:
    """The key file beside a database: `data/inventory.duckdb` -> `data/inventory.duckdb.fingerprint-key`."""
    p = Path(db_path)
    return p.with_name(p.name + KEY_SUFFIX)


def load_key(db_path: str | os.PathLike[str]) -> bytes:
    """The fingerprint key: `INVENTORY_FINGERPRINT_KEY` when set, else the file beside `db_path`
    (created on first use, mode 0600)."""
    env = os.environ.get(KEY_ENV)
    if env is not None:
        if not env:
            raise UsageError(f"{KEY_ENV} is set but empty; unset it or give it a secret key")
        key = env.encode("utf-8", "surrogatepass")
        _check_length(key, KEY_ENV)
        return key
    path = key_path(db_path)
    try:
        return _read_key(path)
    except FileNotFoundError:
        pass
    _create_key(path)
    return _read_key(path)


def _read_key(path: Path) -> bytes:
    """Read an existing key file, refusing one that is not private. FileNotFoundError if absent."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        if e.errno == errno.ELOOP:  # a link, dangling or not: never follow it to a key
            raise StoreError(refuse_link(path)) from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise StoreError(f"{path}: fingerprint key is not a regular file")
        if st.st_uid != os.geteuid():
            raise StoreError(
                f"{path}: fingerprint key belongs to user id {st.st_uid}, not to you "
                f"({os.geteuid()}); a key someone else controls is refused: remove it"
            )
        if st.st_mode & 0o077:
            raise StoreError(
                f"{path}: fingerprint key is readable or writable by others "
                f"(mode {stat.S_IMODE(st.st_mode):04o}); run `chmod 600 {path}` and retry"
            )
        chunks = []
        while chunk := os.read(fd, 4096):
            chunks.append(chunk)
    finally:
        os.close(fd)
    key = b"".join(chunks)
    if not key:
        raise StoreError(f"{path}: fingerprint key file is empty; remove it to create a new key")
    _check_length(key, str(path))
    return key


def _check_length(key: bytes, source: str) -> None:
    """UsageError unless `key` has at least MIN_KEY_BYTES bytes (says how to make one)."""
    if len(key) < MIN_KEY_BYTES:
        raise UsageError(
            f"{source}: fingerprint key is {len(key)} bytes, at least {MIN_KEY_BYTES} are needed; "
            f"make one with `{MAKE_KEY}`; to move a store fingerprinted with another key to "
            "the new one, accept the new key explicitly"
        )


def _create_key(path: Path) -> None:
    """Create the key file with 32 random bytes, mode 0600, atomically; keep one that appeared."""
    make_dirs(path.parent)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        try:
            os.write(fd, secrets.token_bytes(KEY_BYTES))
            os.fsync(fd)
        finally:
            os.close(fd)
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)  # atomic, never replaces: whoever links first wins
    finally:
        tmp.unlink(missing_ok=True)


KEY_ID_DIGITS = 16


def key_id(key: bytes) -> str:
    """A key's id, stored with each run (runs.fingerprint_key_id): the first 16 hex digits of
    HMAC-SHA256(key, "key-id"). Not secret (it reveals nothing of the key), and equal for
    two runs exactly when their fingerprints compare."""
    return hmac.digest(bytes(key), b"key-id", "sha256").hex()[:KEY_ID_DIGITS]


def key_exists(db_path: str | os.PathLike[str]) -> bool:
    """Whether `load_key(db_path)` would use an existing key rather than mint a new one."""
    return os.environ.get(KEY_ENV) is not None or os.path.lexists(key_path(db_path))


class Fingerprinter:
    """`Fingerprinter(key)(value)` -> 'hmac-sha256:' + the first 16 hex digits of HMAC-SHA256."""

    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        if not key:
            raise ValueError("fingerprint key must not be empty")
        self._key = bytes(key)

    def __call__(self, value: str) -> str:
        # surrogatepass: a value with a lone surrogate (valid JSON) still gets a stable fingerprint
        digest = hmac.digest(self._key, value.encode("utf-8", "surrogatepass"), "sha256")
        return PREFIX + digest[: DIGITS // 2].hex()

    def __repr__(self) -> str:  # never show the key
        return "Fingerprinter(<key>)"


def protect_batch(batch: pa.RecordBatch, fingerprint: Callable[[str], str]) -> pa.RecordBatch:
    """`batch` as the lake gets it without `--export-env-values`: every `environment` value
    that is not a fingerprint yet is replaced by its fingerprint, and so are the values of
    secret-looking `command` arguments (`redact_command`). A batch with nothing to replace
    (the default: flatten stored fingerprints) is checked column-wise and returned as it is;
    only a batch that holds values is rebuilt row by row."""
    names = batch.schema.names
    arrays = list(batch.columns)
    changed = False
    if "environment" in names:
        i = names.index("environment")
        env = arrays[i]
        if _holds_values(env):
            rows = [
                None if m is None else [(k, _fingerprinted(v, fingerprint)) for k, v in m]
                for m in env.to_pylist()
            ]
            arrays[i] = pa.array(rows, type=env.type)
            changed = True
    if "command" in names:
        i = names.index("command")
        cmd = arrays[i]
        if _may_hold_secrets(cmd):
            out = []
            hit = False
            for c in cmd.to_pylist():
                r = None if c is None else redact_command(c, fingerprint)
                hit = hit or r is not None
                out.append(c if r is None else r)
            if hit:
                arrays[i] = pa.array(out, type=cmd.type)
                changed = True
    return pa.RecordBatch.from_arrays(arrays, schema=batch.schema) if changed else batch


def _fingerprinted(value: str | None, fingerprint: Callable[[str], str]) -> str | None:
    if value is None or FINGERPRINT_RE.fullmatch(value):
        return value
    return fingerprint(value)


def _children(array: pa.Array, child: pa.Array) -> pa.Array:
    """The child values a (possibly sliced) list or map array's rows use."""
    offsets = array.offsets
    start, stop = offsets[0].as_py(), offsets[-1].as_py()
    return child.slice(start, stop - start)


def _holds_values(env: pa.Array) -> bool:
    values = _children(env, env.items)
    if values.null_count == len(values):
        return False
    is_fingerprint = pc.match_substring_regex(values, f"^{FINGERPRINT_RE.pattern}$")
    return not pc.all(pc.fill_null(is_fingerprint, True)).as_py()


def _may_hold_secrets(cmd: pa.Array) -> bool:
    values = _children(cmd, cmd.values)
    if values.null_count == len(values):
        return False
    hint = pc.match_substring_regex(values, SECRET_NAME_PATTERN, ignore_case=True)
    return bool(pc.any(pc.fill_null(hint, False)).as_py())
