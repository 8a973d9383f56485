"""Private files: what the store, the lake and the report create only their owner can read.

Invariants:
- A file this tool creates is 0600 and a folder it creates is 0700, whatever the umask:
  `open_private` / `temp_beside` create files with mode 0600 (a umask can only remove bits),
  `make_dirs` creates each missing folder of a path with mode 0700. Folders that already
  exist are left as they are.
- Files DuckDB creates itself (the database, its WAL) follow the process umask: a writer
  calls `private_umask()` first, which adds 077 to it (never loosens it).
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

from inventory.errors import StoreError

FILE_MODE = 0o600
DIR_MODE = 0o700
_PRIVATE_UMASK = 0o077


def private_umask() -> None:
    """Add 077 to the process umask (keep any stricter bits): files that libraries create
    on their own (DuckDB's database and WAL) are then private too. Idempotent."""
    old = os.umask(_PRIVATE_UMASK)
    if old & ~_PRIVATE_UMASK:
        os.umask(old | _PRIVATE_UMASK)


def make_dirs(path: Path) -> None:
    """Create `path` and its missing parents, each with mode 0700 (OSError as mkdir)."""
    missing: list[Path] = []
    p = path
    while not p.exists() and not p.is_symlink() and p != p.parent:
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            os.mkdir(d, DIR_MODE)
        except FileExistsError:
            continue  # another process made it: leave it as it is
        os.chmod(d, DIR_MODE)  # the umask may have removed owner bits
    if not path.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(path))


def open_private(path: Path, flags: int) -> int:
    """`os.open(path, flags | O_NOFOLLOW | O_CLOEXEC, 0600)`; a symbolic link at `path`
    (dangling or not) is a StoreError naming it."""
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
    """A new private (0600) temporary file in `final`'s folder, hidden (`.<name>.…tmp`) and
    with an unpredictable name (O_EXCL: never a link someone placed): (fd, path)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    return fd, Path(tmp)


def keep_mode(old: Path, new: Path) -> None:
    """Give `new` the permission bits of the regular file `old` (when there is one) before
    `new` replaces it; otherwise `new` keeps its own (0600)."""
    try:
        st = os.lstat(old)
    except FileNotFoundError:
        return
    if stat.S_ISREG(st.st_mode):
        os.chmod(new, stat.S_IMODE(st.st_mode))
