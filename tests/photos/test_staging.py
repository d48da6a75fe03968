"""Uploads written around the page cache (app/photos/staging.py): the bytes land whole, the part the
upload's check reads back is cached, the rest is not, and a filesystem without O_DIRECT still works."""

from __future__ import annotations

import asyncio
import ctypes
import errno
import logging
import mmap
import os
import threading
from pathlib import Path

import pytest

from app.photos import staging as staging_mod
from app.photos.staging import ALIGN, HEAD_BYTES, O_DIRECT, STAGE_BYTES, TAIL_BYTES, Staging, StagedFile
from app.photos.storage import FilesystemBlobStore, sha256_hex

MB = 1024 * 1024
STAGE = 16 * ALIGN  # small stages: a few hundred KB cross many of them


def chunked(data: bytes, size: int):
    for i in range(0, len(data), size):
        yield data[i:i + size]


def direct_io_bypasses_the_cache(directory: Path) -> bool:
    """Whether this filesystem takes an aligned O_DIRECT write (tmpfs before Linux 6.6 does not) and
    the bytes then sit on a disk rather than in memory (tmpfs since 6.6 takes it, but is memory)."""
    if not O_DIRECT:
        return False
    probe = directory / "odirect-probe"
    buf = mmap.mmap(-1, ALIGN)
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | O_DIRECT, 0o600)
    except OSError:
        return False
    try:
        os.write(fd, buf)
    except OSError:
        return False
    finally:
        os.close(fd)
        buf.close()
    try:
        return not any(resident(probe))
    finally:
        probe.unlink()


@pytest.fixture
def store(tmp_path: Path) -> FilesystemBlobStore:
    return FilesystemBlobStore(tmp_path / "blobs", staging=Staging(stage_bytes=STAGE))


@pytest.fixture
def direct_fs(tmp_path: Path) -> None:
    if not direct_io_bypasses_the_cache(tmp_path):
        pytest.skip("this filesystem does not take O_DIRECT, or keeps what it writes in memory; the "
                    "fallback is tested below")


def resident(path: Path) -> list[bool]:
    """Which of the file's pages are in the page cache (mincore(2) on a mapping that touches none)."""
    libc = ctypes.CDLL(None, use_errno=True)
    size = path.stat().st_size
    pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
    with open(path, "r+b") as f, mmap.mmap(f.fileno(), size) as m:
        anchor = ctypes.c_char.from_buffer(m)
        try:
            vec = (ctypes.c_ubyte * pages)()
            if libc.mincore(ctypes.c_void_p(ctypes.addressof(anchor)), ctypes.c_size_t(size), vec) != 0:
                raise OSError(ctypes.get_errno(), "mincore")
            return [bool(v & 1) for v in vec]
        finally:
            del anchor


SIZES = [1, ALIGN - 1, ALIGN, ALIGN + 1, HEAD_BYTES - 1, HEAD_BYTES, HEAD_BYTES + 1,
         HEAD_BYTES + TAIL_BYTES + ALIGN - 1, HEAD_BYTES + TAIL_BYTES + ALIGN, HEAD_BYTES + 2 * ALIGN + 1,
         9 * STAGE - 1, 9 * STAGE, 9 * STAGE + 1, 9 * STAGE + ALIGN, 700_001]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("piece", [1000, 65536, STAGE + 1])
def test_every_byte_lands_whatever_the_sizes(store, size, piece):
    data = os.urandom(size)
    sha = sha256_hex(data)
    res = store.put_stream(sha, chunked(data, piece), max_bytes=MB)
    assert res.size == size
    assert store.path(sha).read_bytes() == data
    assert store.staging.idle() == 1  # the stage went back


def test_empty_body(store):
    sha = sha256_hex(b"")
    assert store.put_stream(sha, [], max_bytes=MB).size == 0
    assert store.path(sha).read_bytes() == b""


def test_async_path_drains_full_stages(store):
    data = os.urandom(5 * STAGE + 777)
    sha = sha256_hex(data)

    async def body():
        for c in chunked(data, 40_000):
            yield c

    res = asyncio.run(store.put_stream_async(sha, body(), max_bytes=MB))
    assert res.created and store.path(sha).read_bytes() == data


@pytest.mark.parametrize("size", [1_000_003, STAGE_BYTES + 100])  # the second ends just past a full stage
def test_the_middle_goes_around_the_cache_and_the_checked_ends_through_it(direct_fs, tmp_path, size):
    store = FilesystemBlobStore(tmp_path / "blobs")  # the default stages
    data = os.urandom(size)
    sha = sha256_hex(data)
    before = store.staging.direct_bytes
    store.put_stream(sha, chunked(data, 65536), max_bytes=2 * MB)
    path = store.path(sha)
    assert path.read_bytes() == data  # (this read caches it all, so look at a second upload's file)
    direct = store.staging.direct_bytes - before
    tail_from = (len(data) - TAIL_BYTES) // ALIGN * ALIGN
    assert direct == tail_from - HEAD_BYTES

    other = os.urandom(size)
    sha2 = sha256_hex(other)
    store.put_stream(sha2, chunked(other, 65536), max_bytes=2 * MB)
    pages = resident(store.path(sha2))
    head, tail = HEAD_BYTES // ALIGN, tail_from // ALIGN
    assert all(pages[:head]), "the head, which the check parses, is cached"
    assert all(pages[tail:]), "the last 4 KB, which the end-marker check reads, are cached"
    assert not any(pages[head:tail]), "the rest went straight to the disk"


def test_a_filesystem_refusing_o_direct_gets_ordinary_writes(store, monkeypatch, caplog):
    real = staging_mod.fcntl.fcntl

    def refuse(fd, cmd, arg=0):
        if cmd == staging_mod.fcntl.F_SETFL and arg & O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(fd, cmd, arg)

    monkeypatch.setattr(staging_mod.fcntl, "fcntl", refuse)
    store.staging.direct = True  # as on a Linux box whose store sits on tmpfs
    data = os.urandom(600_000)
    sha = sha256_hex(data)
    with caplog.at_level(logging.WARNING, logger="app.photos.staging"):
        store.put_stream(sha, chunked(data, 65536), max_bytes=MB)
    assert store.path(sha).read_bytes() == data
    assert store.staging.direct is False and store.staging.direct_bytes == 0
    assert "refuses O_DIRECT" in caplog.text
    # and from then on the store does not try again
    calls = []
    monkeypatch.setattr(staging_mod.fcntl, "fcntl", lambda *a: calls.append(a) or real(*a))
    more = os.urandom(600_000)
    store.put_stream(sha256_hex(more), chunked(more, 65536), max_bytes=MB)
    assert calls == []


def test_a_failing_disk_fails_the_upload_and_leaves_nothing(store, monkeypatch):
    real = os.pwrite
    writes = []

    def broken(fd, data, offset):
        writes.append(offset)
        if offset >= HEAD_BYTES:
            raise OSError(errno.EIO, "Input/output error")
        return real(fd, data, offset)

    monkeypatch.setattr(staging_mod.os, "pwrite", broken)
    data = os.urandom(600_000)
    sha = sha256_hex(data)
    with pytest.raises(OSError) as exc:
        store.put_stream(sha, chunked(data, 65536), max_bytes=MB)
    assert exc.value.errno == errno.EIO
    assert any(o >= HEAD_BYTES for o in writes)
    assert not store.has(sha)
    assert list(store.tmp_dir.iterdir()) == []
    assert store.staging.idle() == 1
    assert store.staging.direct == staging_mod.Staging().direct  # EIO is not "no O_DIRECT here"


def test_stages_are_reused_and_only_a_few_kept():
    staging = Staging(stage_bytes=STAGE, keep=2)
    a, b, c = staging.take(), staging.take(), staging.take()
    for buf in (a, b, c):
        staging.give(buf)
    assert staging.idle() == 2
    assert c.closed  # the third was let go
    assert staging.take() in (a, b)


@pytest.mark.parametrize("size", [0, ALIGN, ALIGN + 1, 2 * ALIGN + 100])
def test_stage_size_must_be_whole_blocks_and_hold_two(size):
    with pytest.raises(ValueError):
        Staging(stage_bytes=size)


def test_a_cancelled_upload_waits_for_its_disk_write_before_cleaning_up(store, monkeypatch):
    """Cancelled while a full stage is being written in a thread, the upload must not close the file
    or hand the stage to another upload under that thread."""
    entered, release = threading.Event(), threading.Event()
    done: list[str] = []
    real = StagedFile.drain

    def slow_drain(self, final=False):
        if not final:
            entered.set()
            release.wait(30)
        real(self, final)
        done.append("drained" if self.buf is not None else "stage gone")

    monkeypatch.setattr(StagedFile, "drain", slow_drain)
    data = os.urandom(3 * STAGE)
    sha = sha256_hex(data)

    async def body():
        for c in chunked(data, STAGE // 2):
            yield c

    async def scenario():
        task = asyncio.ensure_future(store.put_stream_async(sha, body(), max_bytes=MB))
        while not entered.is_set():
            await asyncio.sleep(0.01)
        task.cancel()
        for _ in range(20):
            await asyncio.sleep(0)
        still_waiting = not task.done()
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        return still_waiting

    assert asyncio.run(scenario()) is True
    assert done == ["drained"]  # the write finished with its stage still there
    assert not store.has(sha)
    assert list(store.tmp_dir.iterdir()) == []
    assert store.staging.idle() == 1


def test_no_memory_for_a_stage_leaves_no_temp_file(store, monkeypatch):
    def no_memory():
        raise MemoryError

    monkeypatch.setattr(store.staging, "take", no_memory)
    data = os.urandom(1000)
    with pytest.raises(MemoryError):
        store.put_stream(sha256_hex(data), [data], max_bytes=MB)
    assert list(store.tmp_dir.iterdir()) == []


@pytest.mark.skipif(not O_DIRECT, reason="no O_DIRECT on this platform: the store writes the ordinary way")
def test_the_app_writes_photos_directly_unless_told_not_to(db, settings):
    from app.main import create_app

    assert create_app(settings, db).state.blob_store.staging.direct is True
    off = settings.model_copy(update={"storage_direct_io": False})
    assert create_app(off, db).state.blob_store.staging.direct is False
