"""The project's exceptions. Each carries a message a user can act on.

Exit codes (docs/contract.md): 0 ok, 3 partial, 1 fatal, 2 usage or configuration error.
"""

from __future__ import annotations


class InventoryError(Exception):
    """Base class. `exit_code` is what the CLI exits with when this escapes a command."""

    exit_code = 1


class CallError(InventoryError):
    """An AWS call the run cannot do without failed for good: names the operation and the
    error code AWS (or botocore) gave, so the run's `errors` row can too."""

    def __init__(self, message: str, operation: str, error_code: str, attempts: int = 0):
        self.operation, self.error_code, self.attempts = operation, error_code, attempts
        super().__init__(message)


class UsageError(InventoryError):
    """A flag, a value or a file the user gave is wrong. Names the field and the value."""

    exit_code = 2


class Unavailable(InventoryError):
    """Something the run needs before its first call could not be reached just now (S3
    unreachable, a network failure): exit 1, not 2, so that a scheduler that retries failed
    runs (a Kubernetes Job's backoff, EventBridge's retries) tries the night again."""

    exit_code = 1


class ConfigError(UsageError):
    """The accounts file is wrong: names the file, the field (and line when known) and value."""

    def __init__(
        self, path: str | None, field: str, value: object, problem: str, line: int | None = None
    ):
        self.path, self.field, self.value, self.problem, self.line = (
            path,
            field,
            value,
            problem,
            line,
        )
        where = path or "<config>"
        if line is not None:
            where += f":{line}"
        super().__init__(f"{where}: {field} = {value!r}: {problem}")


class StoreError(InventoryError):
    """The database or lake cannot be used (corrupt, foreign, locked, unwritable)."""

    exit_code = 1


class BadStore(StoreError):
    """The `--db` file cannot be used as a store: missing (for a reader), not a DuckDB
    database, another application's, written by a newer version, damaged, or not writable
    there. A usage or configuration error: the file is left as it was."""

    exit_code = 2


class StoreLocked(StoreError):
    """Another process holds the writer lock on the database."""

    def __init__(self, db_path: str, holder: str):
        self.db_path, self.holder = db_path, holder
        super().__init__(
            f"{db_path} is being written by another collect ({holder}); "
            "wait for it to finish, or pass --wait to queue behind it"
        )
