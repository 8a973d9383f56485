"""Parquet for a data lake: `<dest>/<table>/run_date=YYYY-MM-DD/<run_id>[.<part>].parquet`.

A run id never contains `.` (plan/runid.py; `file_name` refuses one that does), so a
file's run id is its name up to the first `.`: `<run_id>.parquet` is a run's whole file,
`<run_id>.<part>.parquet` (e.g. `.shard-3`) one of its parts, and re-exporting a run matches
its files exactly, never another run whose id merely starts with it. Lakes written before
named parts `<run_id>-<part>.parquet`, which a name cannot tell from another run's whole
file (`…-a` part `shard-1` or run `…-a-shard-1`): such a file is still read (readers glob
`*.parquet` and use the `run_id` column) and is removed by a re-export only when its rows
are of the run being exported.

`dest` is a local directory or `s3://bucket/prefix`. Files are zstd-compressed with the
schema.py schema exactly, so `read_parquet('<dest>/<table>/*/*.parquet',
hive_partitioning=true)` in DuckDB gives back the store's types (plus `run_date`).

A reader never sees a half or temporary file: locally a file is written to a hidden
temporary name in its final directory (`.<name>.<random>.tmp`, made by mkstemp so never a
link someone placed, and ignored by DuckDB's `*.parquet` globs and by pyarrow datasets),
fsynced, then renamed over the final name; on S3 the whole object is uploaded in one request,
which S3 makes visible atomically. Local files are created 0600 and folders 0700 (files.py);
a file written again keeps its mode.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import functools
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from inventory.errors import StoreError, UsageError
from inventory.storage import fingerprint, schema
from inventory.storage.files import keep_mode, make_dirs, temp_beside
from inventory.storage.fingerprint import Fingerprinter

if TYPE_CHECKING:
    from inventory.storage.store import Store

COMPRESSION = "zstd"
ROW_GROUP_ROWS = 128 * 1024
# run ids and part names in file names: no '.', which ends the run id in a name
_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")

TableData: TypeAlias = "pa.Table | pa.RecordBatchReader | Iterable[pa.RecordBatch]"


@dataclass(frozen=True, slots=True)
class WrittenFile:
    """One Parquet file written: where (a local path or an s3:// URI), which table, rows."""

    path: str
    table: str
    rows: int

    def __str__(self) -> str:
        return self.path


def partition_dir(dest: str | os.PathLike[str], table: str, started_at: dt.datetime) -> str:
    """`<dest>/<table>/run_date=YYYY-MM-DD` for a run that started at `started_at` (UTC date)."""
    if started_at.tzinfo is None:
        raise ValueError("started_at must be timezone-aware")
    day = started_at.astimezone(dt.UTC).date().isoformat()
    return f"{str(dest).rstrip('/')}/{table}/run_date={day}"


def file_name(run_id: str, part: str | int | None = None) -> str:
    """`<run_id>.parquet`, or `<run_id>.<part>.parquet`; neither may contain a `.`."""
    if not _PART.match(run_id):
        raise ValueError(f"run_id {run_id!r} cannot name a file")
    if part is None:
        return f"{run_id}.parquet"
    if not _PART.match(str(part)):
        raise ValueError(f"part {part!r} cannot name a file")
    return f"{run_id}.{part}.parquet"


def own_parts(names: Iterable[str], run_id: str, part: str | None = None) -> list[str]:
    """Of the file names in a partition folder, the new-style part files of run `run_id`
    that an export of it replaces: every `<run_id>.<p>.parquet` when `part` is None (a
    whole-run export), none otherwise (a shard's own file is replaced by name)."""
    if part is not None:
        return []
    head = run_id + "."
    return [
        n
        for n in names
        if n.startswith(head) and n.endswith(".parquet") and len(n) > len(head) + len(".parquet")
    ]


def old_style_candidates(names: Iterable[str], run_id: str, part: str | None = None) -> list[str]:
    """Of the file names in a partition folder, those an older version may have written as
    a part of `run_id` (`<run_id>-<p>.parquet`; with `part`, only `<run_id>-<part>.parquet`).
    A name alone does not prove it: `old_part_of` reads the file's rows."""
    if part is not None:
        wanted = f"{run_id}-{part}.parquet"
        return [n for n in names if n == wanted]
    head = run_id + "-"
    return [n for n in names if n.startswith(head) and n.endswith(".parquet")]


def write_table(
    table: TableData,
    dest: str | os.PathLike[str],
    table_name: str,
    run_id: str,
    started_at: dt.datetime,
    part: str | int | None = None,
) -> WrittenFile:
    """Write `table` (a Table, a RecordBatchReader or batches; streamed) as the Parquet file
    of `table_name` for run `run_id`: `<run_id>.parquet`, or `<run_id>.<part>.parquet`
    (e.g. part="shard-3"). Replaces a file of that name whole. The data is cast to the
    schema.py schema (columns by name; one it lacks is written as nulls)."""
    if table_name not in schema.TABLES:
        raise ValueError(f"unknown table {table_name!r}; one of {', '.join(schema.TABLES)}")
    target = schema.TABLES[table_name]
    directory = partition_dir(dest, table_name, started_at)
    name = file_name(run_id, part)
    batches = _conformed(table, target)
    fs, root = _filesystem(directory)
    if fs is None:
        rows = _write_local(Path(root), name, target, batches)
        return WrittenFile(str(Path(root) / name), table_name, rows)
    rows = _write_remote(fs, f"{root}/{name}", target, batches)
    return WrittenFile(f"{directory}/{name}", table_name, rows)


def export_run(
    store: Store, run_id: str, dest: str | os.PathLike[str], *, env_values: bool = False
) -> list[WrittenFile]:
    """Write run `run_id` of `store` to `dest`: one `<run_id>.parquet` per table (all of
    schema.TABLES, empty ones included), streamed from DuckDB. Exporting a run again replaces
    its files and removes its parts (`<run_id>.<part>.parquet`, and old-style
    `<run_id>-<part>.parquet` ones whose rows are of this run), after the new file is in
    place, so the data never disappears (a reader may briefly see both). Files of other runs
    are never touched, whatever their ids start with.

    A shard of a run (`collect --shard K/N`: runs.shard is K) writes
    `<run_id>.shard-K.parquet` instead, and removes only its own old-style
    `<run_id>-shard-K.parquet`: the other shards' parts of the run sit beside it.

    Values stay where the user put them: a run stored with `--include-env-values` reaches
    the lake with fingerprints (environment values, secret-looking command arguments:
    fingerprint.protect_batch, with the store's key) unless `env_values` (the user's
    `--export-env-values`) says to export them as stored."""
    run = store.run(run_id)
    if run is None:
        raise StoreError(f"{store.path}: no run {run_id}")
    if run["status"] == "running":
        raise StoreError(
            f"{store.path}: run {run_id} is still running (or was interrupted and not yet "
            "marked failed); export it once it has finished"
        )
    started_at: dt.datetime = run["started_at"]
    part = None if run.get("shard") is None else f"shard-{run['shard']}"
    written = []
    protect = None if env_values else _Protect(store.path)
    for table_name in schema.TABLES:
        reader = store.read_run(run_id, table_name)
        fields = schema.TABLES[table_name].names
        data: TableData = reader
        if protect is not None and ("environment" in fields or "command" in fields):
            data = (protect(batch) for batch in reader)
        try:
            w = write_table(data, dest, table_name, run_id, started_at, part)
        finally:
            reader.close()
        remove_parts(dest, table_name, run_id, started_at, part)
        written.append(w)
    return written


class _Protect:
    """fingerprint.protect_batch with the store's key, loaded only when a batch holds values
    (a run stored with fingerprints never needs it)."""

    def __init__(self, db_path: str | os.PathLike[str]) -> None:
        self._db_path = db_path
        self._fingerprint: Fingerprinter | None = None

    def __call__(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        return fingerprint.protect_batch(batch, self._fingerprint_of)

    def _fingerprint_of(self, value: str) -> str:
        if self._fingerprint is None:
            self._fingerprint = Fingerprinter(fingerprint.load_key(self._db_path))
        return self._fingerprint(value)


def remove_parts(
    dest: str | os.PathLike[str],
    table_name: str,
    run_id: str,
    started_at: dt.datetime,
    part: str | None = None,
) -> list[str]:
    """Delete the part files of a run's table that an export of it (whole: `part` None; or
    that part) replaces: `own_parts`, and the `old_style_candidates` whose rows are all of
    `run_id` (an empty or unreadable one is left: it cannot be told from another run's).
    Returns what was removed."""
    directory = partition_dir(dest, table_name, started_at)
    fs, root = _filesystem(directory)
    removed = []
    if fs is None:
        base = Path(root)
        if not base.is_dir():
            return []
        names = [p.name for p in base.iterdir()]
        doomed = own_parts(names, run_id, part) + [
            n
            for n in old_style_candidates(names, run_id, part)
            if old_part_of(str(base / n), None, run_id)
        ]
        for n in doomed:
            (base / n).unlink(missing_ok=True)
            removed.append(str(base / n))
        return removed
    # Listed and deleted with boto3: pyarrow's delete_file leaves a directory marker object.
    bucket, _, key_dir = root.partition("/")
    client = _s3_client()
    listed = _s3_keys(client, bucket, f"{key_dir}/{run_id}")
    names = [k[len(key_dir) + 1 :] for k in listed]
    names = [n for n in names if "/" not in n]
    doomed = own_parts(names, run_id, part) + [
        n
        for n in old_style_candidates(names, run_id, part)
        if old_part_of(f"{root}/{n}", fs, run_id)
    ]
    keys = [f"{key_dir}/{n}" for n in doomed]
    if keys:
        for i in range(0, len(keys), 1000):
            chunk = keys[i : i + 1000]
            resp = client.delete_objects(
                Bucket=bucket, Delete={"Objects": [{"Key": k} for k in chunk], "Quiet": True}
            )
            if resp.get("Errors"):
                err = resp["Errors"][0]
                raise StoreError(f"s3://{bucket}/{err.get('Key')}: cannot delete it: {err}")
    return [f"s3://{bucket}/{k}" for k in keys]


def old_part_of(path: str, fs: pafs.FileSystem | None, run_id: str) -> bool:
    """Whether the Parquet file at `path` has rows and every one is of run `run_id` (False
    when it cannot be read)."""
    try:
        with pq.ParquetFile(path, filesystem=fs) as pf:
            if pf.metadata.num_rows == 0 or "run_id" not in pf.schema_arrow.names:
                return False
            ids = pf.read(columns=["run_id"]).column("run_id").unique().to_pylist()
    except (OSError, pa.ArrowException):
        return False
    return bool(ids == [run_id])


def _s3_settings() -> tuple[str | None, ...]:
    """(region, endpoint, profile, access key): what an S3 client or filesystem is made from.
    AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL and AWS_REGION / AWS_DEFAULT_REGION are honoured."""
    env = os.environ.get
    return (
        env("AWS_REGION") or env("AWS_DEFAULT_REGION"),
        env("AWS_ENDPOINT_URL_S3") or env("AWS_ENDPOINT_URL"),
        env("AWS_PROFILE"),
        env("AWS_ACCESS_KEY_ID"),
    )


def _s3_client() -> Any:
    """A boto3 S3 client, shared while the settings it was made from stay the same (making
    one loads botocore's S3 model, which would otherwise happen once per table)."""
    return _s3_client_for(*_s3_settings())


@functools.lru_cache(maxsize=4)
def _s3_client_for(region: str | None, *_settings: str | None) -> Any:
    import boto3  # only exports to S3 pay for importing it

    return boto3.session.Session().client("s3", region_name=region)


def _s3_keys(client: Any, bucket: str, prefix: str) -> list[str]:
    return [key for key, _ in _s3_objects(client, bucket, prefix)]


def _s3_objects(client: Any, bucket: str, prefix: str) -> list[tuple[str, int]]:
    """(key, bytes) of every object under `prefix`."""
    found: list[tuple[str, int]] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        found.extend((obj["Key"], int(obj.get("Size", 0))) for obj in page.get("Contents", []))
    return found


# --------------------------------------------------------------------------- removing runs


@dataclass(frozen=True, slots=True)
class LakeFile:
    """One file of a run in the lake: where (a local path or an s3:// URI), its table, its
    run and its size."""

    path: str
    table: str
    run_id: str
    size: int


def files_of_run(
    dest: str | os.PathLike[str], run_id: str, started_at: dt.datetime
) -> list[LakeFile]:
    """Every file of run `run_id` under `dest`, in its run_date partition of each table: the
    whole file, every part (each shard's), and the old-style parts whose rows are of it
    (`old_part_of`); never a file of a run whose id merely starts with it, nor a temporary
    file. The `runs` table's files come last: `prune --lake` removes them last, so a run whose
    removal was cut short is still in the lake's runs and the next prune finishes it."""
    tables = [t for t in schema.TABLES if t != "runs"] + ["runs"]
    found: list[LakeFile] = []
    for table in tables:
        directory = partition_dir(dest, table, started_at)
        fs, root = _filesystem(directory)
        listed = _local_files(Path(root)) if fs is None else _remote_files(root, run_id)
        for name, size in listed:
            where = str(Path(root) / name) if fs is None else f"{directory}/{name}"
            mine = name.split(".", 1)[0] == run_id and name.endswith(".parquet")
            if mine or (
                name in old_style_candidates([name], run_id)
                and old_part_of(where if fs is None else f"{root}/{name}", fs, run_id)
            ):
                found.append(LakeFile(where, table, run_id, size))
    return found


def _local_files(directory: Path) -> list[tuple[str, int]]:
    """(name, bytes) of what a local partition folder holds (none when it is not there)."""
    try:
        return [(e.name, e.stat().st_size) for e in os.scandir(directory)]
    except FileNotFoundError:
        return []


def _remote_files(root: str, run_id: str) -> list[tuple[str, int]]:
    """(name, bytes) of the objects directly in an S3 partition ('bucket/key...') whose name
    starts with `run_id`."""
    bucket, _, key_dir = root.partition("/")
    listed = _s3_objects(_s3_client(), bucket, f"{key_dir}/{run_id}")
    named = [(k[len(key_dir) + 1 :], size) for k, size in listed]
    return [(n, size) for n, size in named if "/" not in n]


def delete_files(files: list[LakeFile]) -> list[tuple[LakeFile, str]]:
    """Delete `files` (local or S3): the ones that could not be deleted, each with why. One
    already gone counts as deleted (a second prune after a cut-short one). An emptied local
    partition folder is removed too."""
    failed: list[tuple[LakeFile, str]] = []
    remote = [f for f in files if f.path.startswith("s3://")]
    for f in files:
        if f.path.startswith("s3://"):
            continue
        try:
            Path(f.path).unlink(missing_ok=True)
        except OSError as e:
            failed.append((f, e.strerror or str(e)))
            continue
        with contextlib.suppress(OSError):  # not empty (other runs' files): kept
            Path(f.path).parent.rmdir()
    by_bucket: dict[str, list[LakeFile]] = {}
    for f in remote:
        by_bucket.setdefault(f.path[len("s3://") :].partition("/")[0], []).append(f)
    for bucket, group in by_bucket.items():
        for i in range(0, len(group), 1000):  # DeleteObjects takes 1,000 keys at most
            failed += _delete_objects(bucket, group[i : i + 1000])
    return failed


def _delete_objects(bucket: str, group: list[LakeFile]) -> list[tuple[LakeFile, str]]:
    """One DeleteObjects request: the files it did not delete, with S3's error code."""
    by_key = {f.path[len(f"s3://{bucket}/") :]: f for f in group}
    try:
        resp = _s3_client().delete_objects(
            Bucket=bucket, Delete={"Objects": [{"Key": k} for k in by_key], "Quiet": True}
        )
    except Exception as e:  # botocore's ClientError, EndpointConnectionError...
        code = getattr(e, "response", {}).get("Error", {}).get("Code") or type(e).__name__
        return [(f, code) for f in group]
    return [
        (by_key[err["Key"]], str(err.get("Code") or "error"))
        for err in resp.get("Errors", [])
        if err.get("Key") in by_key
    ]


def read_s3_object(url: str, limit: int) -> bytes:
    """The object at `s3://bucket/key` (an accounts file: a scheduled container has no disk),
    read with the credentials, endpoint and region the lake export uses (`_s3_settings`).
    Raises OSError whose strerror says what is wrong, with S3's error code: FileNotFoundError
    (no such bucket or key), PermissionError (denied), OSError (unreachable, no credentials,
    larger than `limit` bytes)."""
    bucket, _, key = url[len("s3://") :].partition("/")
    if not bucket or not key or key.endswith("/"):
        raise IsADirectoryError(errno.EISDIR, "names no object: give s3://bucket/key")
    try:
        answer = _s3_client().get_object(Bucket=bucket, Key=key)
        with answer["Body"] as body:
            data: bytes = body.read(limit + 1)
    except Exception as e:  # botocore's ClientError, EndpointConnectionError, NoCredentials...
        code = getattr(e, "response", {}).get("Error", {}).get("Code") or type(e).__name__
        if code in ("NoSuchKey", "NoSuchBucket", "404"):
            raise FileNotFoundError(errno.ENOENT, f"no such object ({code})") from None
        if code in ("AccessDenied", "403", "AllAccessDisabled", "InvalidAccessKeyId"):
            raise PermissionError(errno.EACCES, f"access denied ({code})") from None
        raise OSError(errno.EIO, f"cannot be read ({code})") from None
    if len(data) > limit:
        raise OSError(errno.EFBIG, f"larger than {limit:,} bytes")
    return data


# --------------------------------------------------------------------------- internals


def _conformed(data: TableData, target: pa.Schema) -> Iterable[pa.RecordBatch]:
    if isinstance(data, pa.Table):
        source: Iterable[pa.RecordBatch] = data.to_batches(max_chunksize=ROW_GROUP_ROWS)
    else:
        source = data
    for batch in source:
        yield _conform_batch(batch, target)


def _conform_batch(batch: pa.RecordBatch, target: pa.Schema) -> pa.RecordBatch:
    if batch.schema == target:
        return batch
    unknown = [c for c in batch.schema.names if target.get_field_index(c) < 0]
    if unknown:
        raise ValueError(f"columns not in schema.py: {', '.join(unknown)}")
    arrays = []
    for field in target:
        i = batch.schema.get_field_index(field.name)
        col = batch.column(i) if i >= 0 else pa.nulls(batch.num_rows, field.type)
        arrays.append(col if col.type == field.type else col.cast(field.type))
    return pa.RecordBatch.from_arrays(arrays, schema=target)


def _filesystem(directory: str) -> tuple[pafs.FileSystem | None, str]:
    """(None, local path) or (S3 filesystem, 'bucket/key...') for a destination directory."""
    if directory.startswith("s3://"):
        return s3_filesystem(), directory[len("s3://") :]
    if "://" in directory:
        raise StoreError(f"{directory}: only local directories and s3:// URIs are supported")
    return None, directory


def s3_filesystem() -> pafs.S3FileSystem:
    """An S3 filesystem made from `_s3_settings()` (credentials from the standard AWS
    chain), shared while those settings stay the same."""
    return _s3_filesystem_for(*_s3_settings())


@functools.lru_cache(maxsize=4)
def _s3_filesystem_for(
    region: str | None, endpoint: str | None, *_settings: str | None
) -> pafs.S3FileSystem:
    kwargs: dict[str, object] = {}
    if endpoint:
        scheme, sep, rest = endpoint.partition("://")
        if sep:
            kwargs["scheme"] = scheme
            kwargs["endpoint_override"] = rest.rstrip("/")
        else:
            kwargs["endpoint_override"] = endpoint.rstrip("/")
    if region:
        kwargs["region"] = region
    return pafs.S3FileSystem(**kwargs)


def _writer(sink: object, target: pa.Schema) -> pq.ParquetWriter:
    return pq.ParquetWriter(sink, target, compression=COMPRESSION)


def _write_batches(writer: pq.ParquetWriter, batches: Iterable[pa.RecordBatch]) -> int:
    rows = 0
    for batch in batches:
        if batch.num_rows:
            writer.write_batch(batch, row_group_size=ROW_GROUP_ROWS)
            rows += batch.num_rows
    return rows


def _write_local(
    directory: Path, name: str, target: pa.Schema, batches: Iterable[pa.RecordBatch]
) -> int:
    try:
        make_dirs(directory)
    except OSError as e:
        raise StoreError(f"{directory}: cannot create it: {e}") from e
    final = directory / name
    fd, tmp = temp_beside(final)
    try:
        with os.fdopen(fd, "wb") as f:
            writer = _writer(f, target)
            try:
                rows = _write_batches(writer, batches)
            finally:
                writer.close()
            f.flush()
            os.fsync(f.fileno())
        keep_mode(final, tmp)
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(directory)
    return rows


def fsync_dir(directory: Path) -> None:
    """Make a rename in `directory` durable (best effort: not every filesystem allows it)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_remote(
    fs: pafs.FileSystem, key: str, target: pa.Schema, batches: Iterable[pa.RecordBatch]
) -> int:
    # Built in memory (compressed Parquet is small), then uploaded in one request: an S3
    # output stream that fails half way would otherwise still publish what it had on close.
    sink = pa.BufferOutputStream()
    writer = _writer(sink, target)
    try:
        rows = _write_batches(writer, batches)
    finally:
        writer.close()
    body = sink.getvalue()
    try:
        with fs.open_output_stream(key) as out:
            out.write(body)
    except OSError as e:
        raise StoreError(f"s3://{key}: cannot write it: {e}") from e
    return rows


def check_writable(dest: str | os.PathLike[str]) -> None:
    """Before a run's first API call: prove `dest` takes a file, by writing and removing a
    small hidden probe (`.inventory-preflight-*`, which no reader globs). A local folder is
    created if missing; on S3 the bucket must be reachable, and allow PutObject and
    DeleteObject (a re-export deletes old parts). Raises UsageError naming --parquet-dir."""
    import secrets

    text = str(dest).rstrip("/")
    probe = f".inventory-preflight-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        fs, root = _filesystem(text)
    except StoreError as e:
        raise UsageError(f"--parquet-dir {text!r}: {e}") from e
    if fs is None:
        base = Path(root)
        try:
            base.mkdir(parents=True, exist_ok=True)
            fd = os.open(base / probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, b"preflight\n")
            finally:
                os.close(fd)
            os.unlink(base / probe)
        except OSError as e:
            raise UsageError(
                f"--parquet-dir {text}: cannot write there: {e.strerror or e}; give a "
                "writable folder, or --no-parquet"
            ) from e
        return
    bucket, _, prefix = root.partition("/")
    if not bucket:
        raise UsageError(f"--parquet-dir {text!r}: give a bucket, s3://bucket[/prefix]")
    key = f"{prefix.rstrip('/')}/{probe}" if prefix else probe
    try:
        client = _s3_client()
        client.put_object(Bucket=bucket, Key=key, Body=b"preflight\n")
        client.delete_object(Bucket=bucket, Key=key)
    except Exception as e:  # botocore's ClientError, EndpointConnectionError, NoCredentials...
        code = getattr(e, "response", {}).get("Error", {}).get("Code") or type(e).__name__
        raise UsageError(
            f"--parquet-dir {text}: cannot write to the bucket {bucket} ({code}); check that "
            "it exists and that PutObject and DeleteObject are allowed, or use --no-parquet"
        ) from e
