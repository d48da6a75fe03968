"""Content-addressed blob storage (原图 by sha256) behind a small interface.

``BlobStore`` is what services use; ``FilesystemBlobStore`` is the local implementation
(an S3-compatible one can be added later behind the same Protocol: ``path()`` then returns
None and the router streams from ``open()`` or redirects to a presigned URL).

Guarantees of ``FilesystemBlobStore``:

* A blob is only ever visible under its name complete, hash-verified and (if a
  ``validate`` hook is given) validated: bytes are streamed to ``root/tmp/`` (same
  filesystem), hashed chunk by chunk as they arrive and written a 512 KiB stage at a time
  (never held whole in memory beyond that; staging.py), fsynced, checked, and only then linked
  into ``root/ab/cd/<sha256>``.
* A crash or a client disconnect mid-upload leaves at most a temp file in ``root/tmp/``
  (removed by ``cleanup_tmp()`` once older than an hour), never a half blob.
* Publishing uses ``os.link`` (atomic create-if-absent): of several concurrent uploads of
  the same bytes exactly one reports ``created=True`` and nothing is overwritten. On a
  filesystem without hard links it falls back to ``os.replace`` (atomic too; identical
  bytes, so the only loss is that two racers may both report ``created=True``).
"""

from __future__ import annotations

import asyncio
import contextvars
import errno
import functools
import hashlib
import os
import re
import tempfile
import threading
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Generic, Protocol, TypeVar, runtime_checkable

from app.photos.staging import Staging, StagedFile

T = TypeVar("T")
R = TypeVar("R")

_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_HEX2 = re.compile(r"[0-9a-f]{2}")
_KIND_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")

TMP_MAX_AGE_SECONDS = 3600
READ_BYTES = 1 << 20  # put_stream() of a file object reads it this much at a time
_FILE_MODE = 0o640


class StorageError(Exception):
    pass


class InvalidName(StorageError, ValueError):
    """Not 64 lowercase hex digits (or a bad derivative kind): never becomes a path."""


class HashMismatch(StorageError):
    def __init__(self, expected: str, actual: str):
        super().__init__(f"body hashes to {actual}, not {expected}")
        self.expected = expected
        self.actual = actual


class TooLarge(StorageError):
    def __init__(self, max_bytes: int):
        super().__init__(f"body is larger than {max_bytes} bytes")
        self.max_bytes = max_bytes


@dataclass(frozen=True, slots=True)
class PutResult(Generic[T]):
    sha256: str
    size: int
    created: bool  # False: the blob was already stored (the upload was still verified)
    info: T | None = None  # what the validate hook returned


def validate_sha256(name: str) -> str:
    if not isinstance(name, str) or _SHA256_RE.fullmatch(name) is None:
        raise InvalidName("blob name must be a sha256 as 64 lowercase hex digits")
    return name


def _validate_kind(kind: str) -> str:
    if not isinstance(kind, str) or _KIND_RE.fullmatch(kind) is None:
        raise InvalidName("derivative kind must match [a-z0-9][a-z0-9_-]{0,31}")
    return kind


@runtime_checkable
class BlobStore(Protocol):
    def has(self, sha256: str) -> bool: ...

    def open(self, sha256: str) -> BinaryIO:
        """Raises FileNotFoundError (or KeyError in other stores) when absent."""
        ...

    def path(self, sha256: str) -> Path | None:
        """Local file path for FileResponse, or None (absent, or a remote store)."""
        ...

    def put_stream(
        self,
        expected_sha256: str,
        chunks: Iterable[bytes] | BinaryIO,
        max_bytes: int,
        *,
        validate: Callable[[Path], T] | None = None,
    ) -> PutResult[T]: ...

    async def put_stream_async(
        self,
        expected_sha256: str,
        chunks: AsyncIterable[bytes] | Iterable[bytes],
        max_bytes: int,
        *,
        validate: Callable[[Path], T] | None = None,
        on_stored: Callable[[PutResult[T]], object] | None = None,
    ) -> PutResult[T]: ...

    def put_derivative(self, sha256: str, kind: str, data: bytes) -> None: ...

    def derivative_path(self, sha256: str, kind: str) -> Path | None: ...

    def delete(self, sha256: str) -> None: ...


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. Windows: directories cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class _Upload:
    """One upload in progress: a temp file in root/tmp and a running sha256."""

    def __init__(self, store: FilesystemBlobStore, expected_sha256: str, max_bytes: int):
        self.store = store
        self.expected = expected_sha256
        self.max_bytes = max_bytes
        self.size = 0
        self.hasher = hashlib.sha256()
        # A worker thread writing from the stage to the file must not have either closed under it:
        # the event loop's side gives the upload up with abandon(), and a busy thread, once done,
        # cleans up itself (see off_loop).
        self._lock = threading.Lock()
        self._busy = False
        self._abandoned = False
        self.fd, name = store._mkstemp(prefix=f"{expected_sha256[:16]}-")
        self.tmp = Path(name)
        try:
            self.out = StagedFile(self.fd, store.staging)  # written mostly with O_DIRECT: see staging.py
        except BaseException:  # no memory for a stage: leave nothing behind
            os.close(self.fd)
            self.tmp.unlink(missing_ok=True)
            raise

    def count(self, n: int) -> None:
        """Account for n more bytes; raise TooLarge as soon as the limit is passed."""
        self.size += n
        if self.size > self.max_bytes:
            raise TooLarge(self.max_bytes)

    def write(self, chunk: bytes | bytearray | memoryview) -> memoryview | None:
        """Hash and stage a chunk; what did not fit when the stage is full (``out.drain()``, then
        ``out.stage()`` the rest)."""
        self.hasher.update(chunk)
        return self.out.stage(chunk)

    def finish(self, validate: Callable[[Path], T] | None,
               on_stored: Callable[[PutResult[T]], object] | None = None) -> PutResult[T]:
        put = self.commit(validate)
        if on_stored is not None:
            on_stored(put)
        return put

    def commit(self, validate: Callable[[Path], T] | None) -> PutResult[T]:
        self.out.drain(final=True)
        os.fsync(self.fd)
        self.out.close()
        fd, self.fd = self.fd, -1  # closed once, even if close() fails (NFS reports errors there)
        os.close(fd)
        actual = self.hasher.hexdigest()
        if actual != self.expected:
            raise HashMismatch(self.expected, actual)
        # The hook sees the complete, hash-verified bytes; nothing is visible under the name yet.
        info = validate(self.tmp) if validate is not None else None
        os.chmod(self.tmp, _FILE_MODE)
        dest = self.store._blob_path(self.expected)
        self.store._make_fan_out_durable(self.expected)
        created = self.store._publish(self.tmp, dest)
        return PutResult(sha256=self.expected, size=self.size, created=created, info=info)

    async def off_loop(self, fn: Callable[..., R], *args) -> R:
        """``fn(*args)`` in a worker thread. If the request is cancelled meanwhile (the caller then
        calls ``abandon()``), the thread still runs to its end and aborts the upload itself: the
        cancellation neither waits for it nor closes the file under it. The executor's future is
        shielded, so neither this cancellation nor the loop's shutdown withdraws the queued work
        once the upload has been marked busy."""
        with self._lock:
            self._busy = True
        loop = asyncio.get_running_loop()
        try:
            fut = loop.run_in_executor(None, functools.partial(contextvars.copy_context().run, self._marked, fn, *args))
        except BaseException:  # not handed over (an executor shut down): nobody else will clean up
            with self._lock:
                self._busy = False
            raise
        try:
            return await asyncio.shield(fut)
        except asyncio.CancelledError:
            fut.add_done_callback(_retrieve)  # its outcome is the thread's business now
            raise

    def _marked(self, fn: Callable[..., R], *args) -> R | None:
        try:
            with self._lock:
                skip = self._abandoned  # given up before this thread got to it
            return None if skip else fn(*args)
        finally:
            with self._lock:
                self._busy = False
                abandoned = self._abandoned
            if abandoned:
                self.abort()

    def abandon(self) -> None:
        """Give the upload up (from the event loop): abort now, or let the busy thread do it."""
        with self._lock:
            if self._busy:
                self._abandoned = True
                return
        self.abort()

    def abort(self) -> None:
        try:
            self.out.close()
        except Exception:
            pass
        fd, self.fd = self.fd, -1
        if fd >= 0:
            try:
                os.close(fd)
            except OSError:
                pass
        try:
            self.tmp.unlink(missing_ok=True)
        except OSError:
            pass


class FilesystemBlobStore:
    """root/ab/cd/<sha256> for originals, root/derivatives/<kind>/ab/cd/<sha256> for the rest."""

    def __init__(self, root: str | os.PathLike, staging: Staging | None = None):
        self.root = Path(root)
        self.tmp_dir = self.root / "tmp"
        self.derivatives_dir = self.root / "derivatives"
        self._tmp_dir_made = False
        self.staging = staging if staging is not None else Staging()
        # fan-out directories this process has made durable, by their hex prefix: root/ab (256) and
        # root/ab/cd (65,536), a byte each; see _make_fan_out_durable
        self._durable_ab = bytearray(256)
        self._durable_abcd = bytearray(65536)

    def _mkstemp(self, prefix: str) -> tuple[int, str]:
        """A new temp file in root/tmp. The directory is made once per store, not per upload (a
        mkdir failing with EEXIST and a stat, on every photo), and again if someone removed it."""
        if not self._tmp_dir_made:
            self.tmp_dir.mkdir(parents=True, exist_ok=True)
            self._tmp_dir_made = True
        try:
            return tempfile.mkstemp(prefix=prefix, suffix=".part", dir=self.tmp_dir)
        except FileNotFoundError:
            self.tmp_dir.mkdir(parents=True, exist_ok=True)
            return tempfile.mkstemp(prefix=prefix, suffix=".part", dir=self.tmp_dir)

    # ------------------------------------------------------------------ paths

    def _blob_path(self, sha256: str) -> Path:
        validate_sha256(sha256)
        return self.root / sha256[:2] / sha256[2:4] / sha256

    def _derivative_path(self, sha256: str, kind: str) -> Path:
        validate_sha256(sha256)
        _validate_kind(kind)
        return self.derivatives_dir / kind / sha256[:2] / sha256[2:4] / sha256

    # ------------------------------------------------------------------ reads

    def has(self, sha256: str) -> bool:
        return self._blob_path(sha256).is_file()

    def open(self, sha256: str) -> BinaryIO:
        return open(self._blob_path(sha256), "rb")  # FileNotFoundError when absent

    def path(self, sha256: str) -> Path | None:
        p = self._blob_path(sha256)
        return p if p.is_file() else None

    def derivative_path(self, sha256: str, kind: str) -> Path | None:
        p = self._derivative_path(sha256, kind)
        return p if p.is_file() else None

    def iter_blobs(self) -> Iterator[tuple[str, Path]]:
        """(name, path) of every photo stored: root/ab/cd/<sha256> (for a backup). Symbolic links are followed, as
        the reads above follow them (a part of the store moved to another disk)."""
        if not self.root.is_dir():
            return
        for ab in sorted(os.scandir(self.root), key=lambda e: e.name):
            if not (_HEX2.fullmatch(ab.name) and ab.is_dir()):
                continue  # tmp/, derivatives/
            for cd in sorted(os.scandir(ab.path), key=lambda e: e.name):
                if not (_HEX2.fullmatch(cd.name) and cd.is_dir()):
                    continue
                for f in os.scandir(cd.path):
                    if (_SHA256_RE.fullmatch(f.name) and f.name.startswith(ab.name + cd.name)
                            and f.is_file()):
                        yield f.name, Path(f.path)

    # ------------------------------------------------------------------ writes

    def _make_fan_out_durable(self, sha256: str) -> None:
        """Make root/ab/cd/ exist, with its entries in root/ab and root durable.

        Publishing fsyncs the blob's own directory; if that directory is new, its entry in the level
        above must be on disk too, or a crash could take an acknowledged photo away with it. Whoever
        made the directory: a concurrent upload (another worker, say) may have made it a moment ago
        and not have fsynced yet, so each process fsyncs each level once itself, the first time it
        uses the directory, and never again. (An fsync of a directory with nothing new may still
        flush the disk's cache: not on every upload. ext4 happens to commit metadata in order;
        other filesystems need not.)
        """
        ab, abcd = int(sha256[:2], 16), int(sha256[:4], 16)
        if self._durable_abcd[abcd]:
            return
        fan1 = self.root / sha256[:2]
        (fan1 / sha256[2:4]).mkdir(parents=True, exist_ok=True)
        if not self._durable_ab[ab]:
            _fsync_dir(self.root)
            self._durable_ab[ab] = 1
        _fsync_dir(fan1)
        self._durable_abcd[abcd] = 1

    def _publish(self, tmp: Path, dest: Path) -> bool:
        """Move tmp to dest atomically; False if dest already existed (tmp is then removed)."""
        try:
            os.link(tmp, dest)
        except FileExistsError:
            tmp.unlink(missing_ok=True)
            # a concurrent upload of the same photo linked it a moment ago and may not have fsynced
            # its directory yet: this upload answers too, so it makes the entry durable itself
            _fsync_dir(dest.parent)
            return False
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK, errno.ENOSYS):
                raise
            # no hard links here: os.replace is atomic too, and the bytes are identical
            if dest.exists():
                tmp.unlink(missing_ok=True)
                _fsync_dir(dest.parent)  # as above
                return False
            os.replace(tmp, dest)
            _fsync_dir(dest.parent)
            return True
        tmp.unlink(missing_ok=True)
        _fsync_dir(dest.parent)
        return True

    def _begin(self, expected_sha256: str, max_bytes: int) -> _Upload:
        validate_sha256(expected_sha256)
        if max_bytes < 0:
            raise ValueError("max_bytes must be >= 0")
        return _Upload(self, expected_sha256, max_bytes)

    def put_stream(
        self,
        expected_sha256: str,
        chunks: Iterable[bytes] | BinaryIO,
        max_bytes: int,
        *,
        validate: Callable[[Path], T] | None = None,
    ) -> PutResult[T]:
        """Store a stream of chunks (or a binary file object) under its sha256.

        Raises InvalidName, TooLarge (as soon as max_bytes is passed), HashMismatch, or
        whatever ``validate(tmp_path)`` raises; in every failure case nothing is left behind.
        Blocking: from async code use ``put_stream_async``.
        """
        if isinstance(chunks, AsyncIterable):
            raise TypeError("put_stream takes a sync iterable; use put_stream_async for async ones")
        if hasattr(chunks, "read"):
            f = chunks
            chunks = iter(lambda: f.read(READ_BYTES), b"")
        up = self._begin(expected_sha256, max_bytes)
        try:
            for chunk in chunks:
                if not chunk:
                    continue
                up.count(len(chunk))
                rest = up.write(chunk)
                while rest is not None:
                    up.out.drain()
                    rest = up.out.stage(rest)
            return up.commit(validate)
        except BaseException:
            up.abort()
            raise

    async def put_stream_async(
        self,
        expected_sha256: str,
        chunks: AsyncIterable[bytes] | Iterable[bytes],
        max_bytes: int,
        *,
        validate: Callable[[Path], T] | None = None,
        on_stored: Callable[[PutResult[T]], object] | None = None,
    ) -> PutResult[T]:
        """``put_stream`` for Starlette's ``request.stream()``.

        Each chunk is counted against the limit, hashed and copied into the upload's stage as it
        arrives, on the event loop: a chunk is what a socket read or two brought (~64 KB with
        uvicorn's flow control), and hashing it takes tens of microseconds. A worker-thread hop per
        1 MB batch cost more CPU (thread wake-ups and GIL hand-offs) than the hashing it moved off
        the loop (bench/photo_bench.py). What can block, writing the stage to the disk (see
        staging.py) and the fsync, and the CPU work, the ``validate`` hook, share one worker-thread
        hop with the hash check, publishing and then ``on_stored(result)`` (e.g. the database row:
        it runs only once the blob is published); a photo larger than a stage takes a hop per
        further stage. If the request fails or is cancelled, the temp file is removed.
        """
        up = self._begin(expected_sha256, max_bytes)
        try:
            async for chunk in _as_async(chunks):
                if chunk:
                    up.count(len(chunk))
                    rest = up.write(chunk)
                    while rest is not None:
                        await up.off_loop(up.out.drain)
                        rest = up.out.stage(rest)
            return await up.off_loop(up.finish, validate, on_stored)
        except BaseException:
            up.abandon()
            raise

    def put_derivative(self, sha256: str, kind: str, data: bytes) -> None:
        """Write (or overwrite: derivatives are reproducible) atomically via root/tmp."""
        dest = self._derivative_path(sha256, kind)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, name = self._mkstemp(prefix=f"{sha256[:16]}-{kind}-")
        tmp = Path(name)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, _FILE_MODE)
            os.replace(tmp, dest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(dest.parent)

    def delete(self, sha256: str) -> None:
        """Remove the blob and all its derivatives; absent is fine (idempotent)."""
        self._blob_path(sha256).unlink(missing_ok=True)
        if self.derivatives_dir.is_dir():
            for kind_dir in self.derivatives_dir.iterdir():
                if kind_dir.is_dir() and _KIND_RE.fullmatch(kind_dir.name):
                    (kind_dir / sha256[:2] / sha256[2:4] / sha256).unlink(missing_ok=True)

    # ------------------------------------------------------------------ housekeeping

    def check_writable(self) -> None:
        """Start-up: a photo can be written here (the temp directory made, a file written, synced and removed),
        or an error naming the directory. A store that cannot be written otherwise showed as healthy while
        every upload failed."""
        try:
            fd, name = self._mkstemp("probe-")
            try:
                os.write(fd, b"firegrid")
                os.fsync(fd)
            finally:
                os.close(fd)
                os.unlink(name)
        except OSError as exc:
            raise RuntimeError(f"FIREGRID_STORAGE_DIR {self.root}: photos cannot be written there: {exc}") from exc

    def cleanup_tmp(self, max_age_seconds: float = TMP_MAX_AGE_SECONDS, *, now: float | None = None) -> int:
        """Remove temp files older than max_age_seconds (left by crashes). Returns how many."""
        if not self.tmp_dir.is_dir():
            return 0
        now = time.time() if now is None else now
        removed = 0
        for entry in os.scandir(self.tmp_dir):
            try:
                if entry.is_file(follow_symlinks=False) and now - entry.stat().st_mtime > max_age_seconds:
                    os.unlink(entry.path)
                    removed += 1
            except FileNotFoundError:
                pass
        return removed


def _retrieve(fut: asyncio.Future) -> None:
    if not fut.cancelled():
        fut.exception()  # retrieved, so asyncio does not log it as never retrieved


def _as_async(chunks: AsyncIterable[bytes] | Iterable[bytes]) -> AsyncIterable[bytes]:
    if isinstance(chunks, AsyncIterable):
        return chunks

    async def each() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk
    return each()


def sha256_file(path: str | os.PathLike) -> str:
    """The sha256 of a file's bytes, read a MiB at a time."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(READ_BYTES):
            h.update(chunk)
    return h.hexdigest()


def sha256_hex(data: bytes) -> str:
    """Convenience for callers and tests."""
    return hashlib.sha256(data).hexdigest()


__all__ = [
    "BlobStore",
    "FilesystemBlobStore",
    "HashMismatch",
    "InvalidName",
    "PutResult",
    "StorageError",
    "TooLarge",
    "sha256_hex",
    "validate_sha256",
]
