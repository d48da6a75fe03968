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
        return not any(resident(probe))
    except OSError:
        return False
    finally:
        os.close(fd)
        buf.close()
        probe.unlink()


@pytest.fixture
def store(tmp_path: Path) -> FilesystemBlobStore:
    return FilesystemBlobStore(tmp_path / "blobs", staging=Staging(stage_bytes=STAGE))


@pytest.fixture
def direct_fs(tmp_path: Path) -> None:
    if mmap.PAGESIZE != ALIGN:
        pytest.skip("the page-cache checks count 4 KiB pages")
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


@pytest.fixture
def writes(monkeypatch) -> list[tuple[str, int, int]]:
    """Every write of the stages, as (mode, offset, length); a direct one must be whole blocks from a
    block-aligned address, whatever the filesystem lets pass (tmpfs checks nothing)."""
    real = os.pwrite
    seen: list[tuple[str, int, int]] = []

    def pwrite(fd, data, offset):
        direct = bool(staging_mod.fcntl.fcntl(fd, staging_mod.fcntl.F_GETFL) & O_DIRECT) if O_DIRECT else False
        if direct:
            address = ctypes.addressof(ctypes.c_char.from_buffer(data))
            assert offset % ALIGN == 0 and len(data) % ALIGN == 0 and address % ALIGN == 0, (offset, len(data), address)
        seen.append(("direct" if direct else "cached", offset, len(data)))
        return real(fd, data, offset)

    monkeypatch.setattr(staging_mod.os, "pwrite", pwrite)
    return seen


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("piece", [1000, 65536, STAGE + 1])
def test_every_byte_lands_whatever_the_sizes(store, writes, size, piece):
    direct_before = store.staging.direct
    data = os.urandom(size)
    sha = sha256_hex(data)
    res = store.put_stream(sha, chunked(data, piece), max_bytes=MB)
    assert res.size == size
    assert store.path(sha).read_bytes() == data
    assert store.staging.idle() == 1  # the stage went back
    assert store.staging.direct == direct_before  # no silent fallback on the way
    # each byte written once, in order, the head and the last 4 KB through the page cache
    assert sum(n for _, _, n in writes) == size
    assert [o for _, o, _ in writes] == sorted(o for _, o, _ in writes)
    for mode, offset, n in writes:
        if mode == "direct":
            assert offset >= HEAD_BYTES and offset + n <= size - TAIL_BYTES


def test_short_writes_are_carried_on(store, monkeypatch):
    real = os.pwrite
    calls = []

    def stingy(fd, data, offset):  # the kernel may write less than asked; whole blocks for O_DIRECT
        calls.append(len(data))
        return real(fd, memoryview(data)[:min(len(data), 2 * ALIGN)], offset)

    monkeypatch.setattr(staging_mod.os, "pwrite", stingy)
    data = os.urandom(5 * STAGE + 1234)
    sha = sha256_hex(data)
    store.put_stream(sha, chunked(data, 65536), max_bytes=MB)
    assert store.path(sha).read_bytes() == data
    assert max(calls) > 2 * ALIGN  # some writes were cut short and resumed


def test_the_fsync_comes_after_the_last_write(store, monkeypatch):
    from app.photos import storage

    events = []
    real_pwrite, real_fsync = os.pwrite, os.fsync
    monkeypatch.setattr(staging_mod.os, "pwrite", lambda fd, d, o: events.append(("write", fd)) or real_pwrite(fd, d, o))
    monkeypatch.setattr(storage.os, "fsync", lambda fd: events.append(("fsync", fd)) or real_fsync(fd))
    data = os.urandom(3 * STAGE + 99)
    store.put_stream(sha256_hex(data), chunked(data, 65536), max_bytes=MB)
    file_fd = events[0][1]
    first_fsync = events.index(("fsync", file_fd))  # later fsyncs are directories' (the number is reused)
    written = [i for i, (kind, fd) in enumerate(events) if kind == "write"]
    assert len(written) >= 3 and max(written) < first_fsync


def test_a_png_goes_through_the_page_cache_whole(direct_fs, tmp_path, writes):
    """Its check reads every chunk back (CRCs): written directly, it would be read from the disk."""
    store = FilesystemBlobStore(tmp_path / "blobs")
    png = staging_mod.PNG_SIGNATURE + os.urandom(900_000)
    store.put_stream(sha256_hex(png), chunked(png, 65536), max_bytes=MB)
    assert writes and all(mode == "cached" for mode, _, _ in writes)
    jpeg_like = b"\xff\xd8\xff" + os.urandom(900_000)
    store.put_stream(sha256_hex(jpeg_like), chunked(jpeg_like, 65536), max_bytes=MB)
    assert any(mode == "direct" for mode, _, _ in writes)


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


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("keep", [2, 0])  # 0: the stage is closed on the way out, not kept
def test_a_failing_disk_fails_the_upload_and_leaves_nothing(tmp_path, monkeypatch, keep):
    store = FilesystemBlobStore(tmp_path / "blobs", staging=Staging(stage_bytes=STAGE, keep=keep))
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
    fds = open_fds()
    with pytest.raises(OSError) as exc:
        store.put_stream(sha, chunked(data, 65536), max_bytes=MB)
    assert exc.value.errno == errno.EIO
    assert any(o >= HEAD_BYTES for o in writes)
    assert not store.has(sha)
    assert list(store.tmp_dir.iterdir()) == []
    assert open_fds() == fds
    assert store.staging.idle() == min(keep, 1)
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


class SlowDrains:
    """StagedFile.drain, held until released; records whether each drain still had its stage."""

    def __init__(self, monkeypatch):
        self.entered, self.release, self.finished = threading.Event(), threading.Event(), threading.Event()
        self.seen: list[str] = []
        real = StagedFile.drain

        def drain(writer, final=False):
            if not final:
                self.entered.set()
                assert self.release.wait(30)
            self.seen.append("stage there" if writer.buf is not None else "stage gone")
            real(writer, final)
            self.finished.set()

        monkeypatch.setattr(StagedFile, "drain", drain)


def wait_until(cond) -> None:
    for _ in range(3000):  # waits for another thread's cleanup; asserts nothing about time
        if cond():
            return
        threading.Event().wait(0.01)
    raise AssertionError("the condition never came true")


def body_of(data: bytes):
    async def body():
        for c in chunked(data, STAGE // 2):
            yield c
    return body()


def test_a_cancelled_upload_leaves_the_cleanup_to_its_busy_thread(store, monkeypatch):
    """Cancelled while a full stage is being written in a worker thread, the upload answers the
    cancellation at once, but neither closes the file nor hands the stage on under that thread:
    the thread finishes its write and then cleans up."""
    slow = SlowDrains(monkeypatch)
    data = os.urandom(3 * STAGE)
    sha = sha256_hex(data)
    fds = open_fds()

    async def scenario():
        task = asyncio.ensure_future(store.put_stream_async(sha, body_of(data), max_bytes=MB))
        while not slow.entered.is_set():
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # the thread is still inside its write: the upload's file and stage are still its own
        assert len(list(store.tmp_dir.iterdir())) == 1
        assert store.staging.idle() == 0
        slow.release.set()

    asyncio.run(scenario())
    wait_until(lambda: not list(store.tmp_dir.iterdir()))
    wait_until(lambda: store.staging.idle() == 1)
    assert slow.seen == ["stage there"]
    assert not store.has(sha)
    assert open_fds() == fds


def test_an_upload_cut_off_by_the_loop_shutting_down_is_cleaned_up_by_its_thread(store, monkeypatch):
    """The server stopping with an upload mid-write: asyncio.run cancels the request's task and then
    waits for the executor's threads; the write still finds its stage and the upload leaves nothing."""
    slow = SlowDrains(monkeypatch)
    from app.photos import storage

    real_abandon = storage._Upload.abandon

    def abandon(up):
        real_abandon(up)
        slow.release.set()  # the cancellation has been handled: let the write go on

    monkeypatch.setattr(storage._Upload, "abandon", abandon)
    data = os.urandom(3 * STAGE)
    sha = sha256_hex(data)

    async def serve_then_stop():
        asyncio.ensure_future(store.put_stream_async(sha, body_of(data), max_bytes=MB))
        while not slow.entered.is_set():
            await asyncio.sleep(0.01)
        # returning leaves the upload's task behind, as a server's shutdown does

    asyncio.run(serve_then_stop())
    assert slow.finished.is_set() and slow.seen == ["stage there"]
    assert list(store.tmp_dir.iterdir()) == []
    assert store.staging.idle() == 1


def test_an_upload_given_up_before_its_thread_starts_skips_the_work(store):
    data = os.urandom(1000)
    up = store._begin(sha256_hex(data), MB)
    up.write(data)
    up._busy = True  # as off_loop marks it before handing the work to the executor
    up.abandon()
    assert len(list(store.tmp_dir.iterdir())) == 1  # not yet: the queued work will do it
    called = []
    up._marked(lambda: called.append(1))
    assert called == []
    assert list(store.tmp_dir.iterdir()) == []
    assert up.fd == -1 and up.out.buf is None


def test_a_stage_still_viewed_is_let_go_without_an_error():
    staging = Staging(stage_bytes=STAGE, keep=0)
    buf = staging.take()
    view = memoryview(buf)[10:20]  # as a failed write's traceback may hold one
    staging.give(buf)
    assert staging.idle() == 0
    view.release()


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


def test_an_upload_cancelled_while_its_work_is_queued_is_still_cleaned_up(store):
    """Every worker thread busy: the upload's write waits in the executor's queue when the request is
    cancelled. The queued work must not be withdrawn, or nobody would remove the temp file."""
    from concurrent.futures import ThreadPoolExecutor

    data = os.urandom(3 * STAGE)
    sha = sha256_hex(data)
    blocker = threading.Event()

    executor = ThreadPoolExecutor(max_workers=1)

    async def scenario():
        loop = asyncio.get_running_loop()
        loop.set_default_executor(executor)
        occupied = loop.run_in_executor(None, blocker.wait, 30)
        task = asyncio.ensure_future(store.put_stream_async(sha, body_of(data), max_bytes=MB))
        while executor._work_queue.qsize() == 0:  # the first full stage's write, queued
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        blocker.set()
        await occupied

    asyncio.run(scenario())
    wait_until(lambda: not list(store.tmp_dir.iterdir()))
    assert store.staging.idle() == 1


def test_an_upload_whose_work_cannot_be_handed_to_a_thread_cleans_up_at_once(store):
    from concurrent.futures import ThreadPoolExecutor

    data = os.urandom(3 * STAGE)
    executor = ThreadPoolExecutor(max_workers=1)
    executor.shutdown()

    async def scenario():
        asyncio.get_running_loop().set_default_executor(executor)
        with pytest.raises(RuntimeError):
            await store.put_stream_async(sha256_hex(data), body_of(data), max_bytes=MB)

    asyncio.run(scenario())
    assert list(store.tmp_dir.iterdir()) == []
    assert store.staging.idle() == 1
