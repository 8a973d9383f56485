"""Private files: what the store, the lake and the report create only their owner can read.

Invariants:
- A file this tool creates is 0600 and a folder it creates is 0700, whatever the umask:
  `open_private` / `temp_beside` create files with mode 0600 (a umask can only remove bits),
  `make_dirs` creates each missing folder of a path with mode 0700. Folders that already
  exist are left as they are.
- `INVENTORY_GROUP_READABLE=1` relaxes that to 0640 and 0750 (a lake or report that a group,
  e.g. a web server or an analytics team, reads); the fingerprint key stays 0600 always.
- Files DuckDB creates itself (the database, its WAL) follow the process umask: a writer
  calls `private_umask()` first, which adds 077 to it (027 when group-readable).
- A file that is rewritten (a temporary renamed over it) keeps the mode it had:
  `keep_mode(old, new)` before the rename. So a store or report someone made group-readable
  with `chmod` stays so.
- Nothing here follows a symbolic link at a name it creates or opens for writing
  (`O_NOFOLLOW`, `O_EXCL`); a link there is a one-line `StoreError`.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from pathlib import Path

from inventory.errors import StoreError, UsageError

GROUP_ENV = "INVENTORY_GROUP_READABLE"
FILE_MODE, DIR_MODE, UMASK = 0o600, 0o700, 0o077  # the default: the owner only
GROUP_FILE_MODE, GROUP_DIR_MODE, GROUP_UMASK = 0o640, 0o750, 0o027  # with GROUP_ENV=1
_TRUE, _FALSE = ("1", "true", "yes"), ("", "0", "false", "no")


def group_readable() -> bool:
    """Whether `INVENTORY_GROUP_READABLE` asks for group-readable files (UsageError naming
    the variable when its value is neither 1/true/yes nor 0/false/no)."""
    value = os.environ.get(GROUP_ENV, "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise UsageError(f"{GROUP_ENV}={os.environ[GROUP_ENV]!r}: give 1 (group-readable) or 0")


def file_mode() -> int:
    return GROUP_FILE_MODE if group_readable() else FILE_MODE


def dir_mode() -> int:
    return GROUP_DIR_MODE if group_readable() else DIR_MODE


def private_umask() -> None:
    """Tighten the process umask: files that libraries create on their own (DuckDB's
    database and WAL) are then private too. By default 077 is added to it (any stricter
    bits are kept); group-readable, it is 027. Idempotent."""
    if group_readable():
        os.umask(GROUP_UMASK)
        return
    old = os.umask(UMASK)
    if old & ~UMASK:
        os.umask(old | UMASK)


def make_dirs(path: Path) -> None:
    """Create `path` and its missing parents, each with `dir_mode()` (OSError as mkdir)."""
    missing: list[Path] = []
    p = path
    while not p.exists() and not p.is_symlink() and p != p.parent:
        missing.append(p)
        p = p.parent
    wanted = dir_mode()
    for d in reversed(missing):
        try:
            os.mkdir(d, wanted)
        except FileExistsError:
            continue  # another process made it: leave it as it is
        os.chmod(d, wanted)  # exactly: whatever the umask
    if not path.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(path))


def open_private(path: Path, flags: int) -> int:
    """`os.open(path, flags | O_NOFOLLOW | O_CLOEXEC, 0600)` (for the tool's own small
    files: the writer lock); a symbolic link at `path` (dangling or not) is a StoreError
    naming it."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
    except OSError as e:
        if e.errno == errno.ELOOP or (e.errno == errno.EEXIST and path.is_symlink()):
            raise StoreError(refuse_link(path)) from None
        raise


def refuse_link(path: Path) -> str:
    """The one-line message for a symbolic link where the tool writes or reads its own file."""
    try:
        target = f" (to {os.readlink(path)})"
    except OSError:
        target = ""
    return f"{path}: is a symbolic link{target}; refusing to follow it. Remove the link and retry"


def temp_beside(final: Path) -> tuple[int, Path]:
    """A new temporary file (0600) in `final`'s folder, hidden (`.<name>.…tmp`) and with an
    unpredictable name (O_EXCL: never a link someone placed): (fd, path). `keep_mode`
    gives it its final mode before it is renamed over `final`."""
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    return fd, Path(tmp)


def keep_mode(old: Path, new: Path) -> None:
    """Give `new` the permission bits of the regular file `old` when there is one (`new`
    is about to replace it), else `file_mode()`."""
    try:
        st = os.lstat(old)
    except FileNotFoundError:
        os.chmod(new, file_mode())
        return
    os.chmod(new, stat.S_IMODE(st.st_mode) if stat.S_ISREG(st.st_mode) else file_mode())


def write_replacing(path: Path, data: bytes, mode: int | None = None) -> None:
    """Write `data` to `path` whole or not at all: a temporary file beside it, renamed over
    it (a reader never sees half a file). Mode `mode` whatever the umask, else `keep_mode`'s
    (the replaced file's, or `file_mode()` for a new one)."""
    fd, tmp = temp_beside(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        if mode is None:
            keep_mode(path, tmp)
        else:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
