from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path

import pytest

from app.photos.imaging import THUMB_SIDE, ImageInfo, ImageRejected, inspect_image, make_derivative
from app.photos.storage import (
    BlobStore,
    FilesystemBlobStore,
    HashMismatch,
    InvalidName,
    PutResult,
    TooLarge,
    sha256_hex,
)

MB = 1024 * 1024


@pytest.fixture
def store(tmp_path: Path) -> FilesystemBlobStore:
    return FilesystemBlobStore(tmp_path / "blobs")


def chunked(data: bytes, size: int = 1000):
    for i in range(0, len(data), size):
        yield data[i : i + size]


def blob_files(store: FilesystemBlobStore) -> list[Path]:
    """Every file outside tmp/ and derivatives/ (i.e. visible blobs)."""
    out = []
    for p in store.root.rglob("*"):
        rel = p.relative_to(store.root).parts
        if p.is_file() and rel[0] not in ("tmp", "derivatives"):
            out.append(p)
    return out


def tmp_files(store: FilesystemBlobStore) -> list[Path]:
    return list(store.tmp_dir.iterdir()) if store.tmp_dir.exists() else []


def test_filesystem_store_satisfies_protocol(store):
    assert isinstance(store, BlobStore)


def test_round_trip(store):
    data = os.urandom(10_000)
    sha = sha256_hex(data)
    assert not store.has(sha)
    assert store.path(sha) is None
    res = store.put_stream(sha, chunked(data), max_bytes=MB)
    assert res == PutResult(sha256=sha, size=len(data), created=True, info=None)
    assert store.has(sha)
    assert store.path(sha) == store.root / sha[:2] / sha[2:4] / sha
    with store.open(sha) as f:
        assert f.read() == data
    assert tmp_files(store) == []


def test_put_from_file_object(store, tmp_path):
    data = os.urandom(3 * MB + 7)
    src = tmp_path / "upload.bin"
    src.write_bytes(data)
    with open(src, "rb") as f:
        res = store.put_stream(sha256_hex(data), f, max_bytes=4 * MB)
    assert res.created and res.size == len(data)
    assert store.path(res.sha256).read_bytes() == data


def test_open_missing_raises(store):
    with pytest.raises(FileNotFoundError):
        store.open("0" * 64)


def test_identical_put_is_idempotent(store):
    data = b"same bytes twice"
    sha = sha256_hex(data)
    first = store.put_stream(sha, [data], max_bytes=MB)
    second = store.put_stream(sha, chunked(data, 3), max_bytes=MB)
    assert first.created is True
    assert second.created is False
    assert second.size == len(data)
    assert len(blob_files(store)) == 1
    assert tmp_files(store) == []


def test_repeat_put_is_still_hash_verified(store):
    data = b"original"
    sha = sha256_hex(data)
    store.put_stream(sha, [data], max_bytes=MB)
    with pytest.raises(HashMismatch):
        store.put_stream(sha, [b"something else"], max_bytes=MB)
    assert store.path(sha).read_bytes() == data  # untouched


def test_hash_mismatch_leaves_nothing(store):
    data = b"these bytes"
    wrong = sha256_hex(b"other bytes")
    with pytest.raises(HashMismatch) as e:
        store.put_stream(wrong, chunked(data, 4), max_bytes=MB)
    assert e.value.expected == wrong
    assert e.value.actual == sha256_hex(data)
    assert not store.has(wrong)
    assert blob_files(store) == []
    assert tmp_files(store) == []


def test_too_large_stops_as_soon_as_limit_passed(store):
    consumed = []

    def endless():
        for i in range(10_000):
            consumed.append(i)
            yield b"x" * 1000

    with pytest.raises(TooLarge) as e:
        store.put_stream("a" * 64, endless(), max_bytes=5_500)
    assert e.value.max_bytes == 5_500
    assert len(consumed) == 6  # 6th chunk passes 5500: stop there, read no further
    assert blob_files(store) == []
    assert tmp_files(store) == []


def test_exactly_max_bytes_is_accepted(store):
    data = b"y" * 4096
    res = store.put_stream(sha256_hex(data), chunked(data, 1024), max_bytes=4096)
    assert res.created


def test_crash_mid_upload_leaves_no_blob_and_retry_succeeds(store):
    data = os.urandom(50_000)
    sha = sha256_hex(data)

    def dies_midway():
        for i, chunk in enumerate(chunked(data, 5000)):
            if i == 5:
                raise ConnectionResetError("client went away")
            yield chunk

    with pytest.raises(ConnectionResetError):
        store.put_stream(sha, dies_midway(), max_bytes=MB)
    assert not store.has(sha)
    assert blob_files(store) == []
    assert tmp_files(store) == []

    res = store.put_stream(sha, chunked(data, 5000), max_bytes=MB)
    assert res.created is True
    assert store.path(sha).read_bytes() == data


def test_hard_crash_leaves_only_tmp_which_cleanup_removes(store):
    # Simulate a killed process: an upload's temp file is left behind, nothing else.
    data = os.urandom(2000)
    sha = sha256_hex(data)
    gen = chunked(data, 500)
    up = store._begin(sha, MB)
    up.write(next(gen))  # ... and then the process dies: no abort(), no commit()
    os.close(up.fd)
    assert not store.has(sha)
    assert len(tmp_files(store)) == 1
    fresh = store.tmp_dir / "fresh.part"
    fresh.write_bytes(b"in progress")

    assert store.cleanup_tmp() == 0  # both younger than an hour
    old = time.time() - 2 * 3600
    os.utime(up.tmp, (old, old))
    assert store.cleanup_tmp() == 1
    assert tmp_files(store) == [fresh]
    assert store.put_stream(sha, [data], max_bytes=MB).created


@pytest.mark.parametrize(
    "name",
    [
        "",
        "abc",
        "A" * 64,  # upper case
        "g" * 64,
        "0" * 63,
        "0" * 65,
        "../" + "0" * 61,
        "0" * 62 + "/.",
        "0" * 64 + "\n",
        "..",
        None,
    ],
)
def test_invalid_names_rejected(store, name):
    with pytest.raises(InvalidName):
        store.put_stream(name, [b"x"], max_bytes=MB)
    with pytest.raises(InvalidName):
        store.has(name)
    with pytest.raises(InvalidName):
        store.path(name)
    with pytest.raises(InvalidName):
        store.open(name)
    with pytest.raises(InvalidName):
        store.delete(name)
    assert not store.tmp_dir.exists() or tmp_files(store) == []


@pytest.mark.parametrize("kind", ["", "../x", "Thumb", "a/b", "x" * 40])
def test_invalid_derivative_kind_rejected(store, kind):
    with pytest.raises(InvalidName):
        store.put_derivative("0" * 64, kind, b"x")


def test_concurrent_puts_of_same_blob(store):
    data = os.urandom(200_000)
    sha = sha256_hex(data)
    n = 8
    barrier = threading.Barrier(n)
    results: list[PutResult] = []
    errors: list[BaseException] = []

    def worker():
        try:
            barrier.wait()
            results.append(store.put_stream(sha, chunked(data, 4096), max_bytes=MB))
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(results) == n
    assert sum(r.created for r in results) == 1
    assert blob_files(store) == [store.path(sha)]
    assert store.path(sha).read_bytes() == data
    assert tmp_files(store) == []


# ----------------------------------------------------------------------------- validate hook


def test_validate_hook_result_is_returned(store, exif_jpeg):
    sha = sha256_hex(exif_jpeg)
    seen = []

    def validate(p: Path) -> ImageInfo:
        seen.append(p)
        assert not store.has(sha)  # runs before the blob becomes visible
        assert p.parent == store.tmp_dir
        return inspect_image(p)

    res = store.put_stream(sha, chunked(exif_jpeg, 256), max_bytes=MB, validate=validate)
    assert res.created
    assert isinstance(res.info, ImageInfo)
    assert res.info.mime == "image/jpeg" and res.info.orientation == 6
    assert len(seen) == 1


@pytest.mark.parametrize("fixture", ["truncated_jpeg", "text_as_jpg", "png_bomb_header"])
def test_invalid_image_never_visible(store, request, fixture):
    data = request.getfixturevalue(fixture)
    sha = sha256_hex(data)
    with pytest.raises(ImageRejected):
        store.put_stream(sha, chunked(data), max_bytes=MB, validate=inspect_image)
    assert not store.has(sha)
    assert blob_files(store) == []
    assert tmp_files(store) == []


# ----------------------------------------------------------------------------- derivatives


def test_derivatives_round_trip_and_delete(store, exif_jpeg):
    sha = sha256_hex(exif_jpeg)
    store.put_stream(sha, [exif_jpeg], max_bytes=MB)
    assert store.derivative_path(sha, "thumb") is None
    thumb = make_derivative(store.path(sha), THUMB_SIDE)
    store.put_derivative(sha, "thumb", thumb)
    store.put_derivative(sha, "thumb", thumb)  # overwrite is fine
    p = store.derivative_path(sha, "thumb")
    assert p is not None and p.read_bytes() == thumb
    assert tmp_files(store) == []

    store.delete(sha)
    assert not store.has(sha)
    assert store.derivative_path(sha, "thumb") is None
    store.delete(sha)  # idempotent
    assert blob_files(store) == []


# ----------------------------------------------------------------------------- async


async def _agen(chunks, fail_at: int | None = None):
    for i, c in enumerate(chunks):
        if i == fail_at:
            raise ConnectionResetError("client went away")
        await asyncio.sleep(0)
        yield c


def test_async_round_trip_in_many_chunks_with_validate(store, big_jpeg):
    sha = sha256_hex(big_jpeg)
    res = asyncio.run(
        store.put_stream_async(sha, _agen(chunked(big_jpeg, 7000)), MB, validate=inspect_image)
    )
    assert res.created and res.size == len(big_jpeg)
    assert res.info.width == 1200
    assert store.path(sha).read_bytes() == big_jpeg
    again = asyncio.run(store.put_stream_async(sha, _agen([big_jpeg]), MB))
    assert again.created is False


def test_async_on_stored_runs_once_the_blob_is_published_and_its_failure_is_not_hidden(store):
    data = os.urandom(70_000)
    sha = sha256_hex(data)
    seen = []

    def on_stored(put):
        seen.append((put.sha256, put.size, put.created, store.has(sha), threading.current_thread()))

    res = asyncio.run(store.put_stream_async(sha, _agen(chunked(data, 9000)), MB, on_stored=on_stored))
    assert res.created
    [(name, size, created, visible, thread)] = seen
    assert (name, size, created, visible) == (sha, len(data), True, True)
    assert thread is not threading.main_thread()  # off the event loop, with the fsync and the publish

    def fails(put):
        raise RuntimeError("database down")

    other = os.urandom(5000)
    with pytest.raises(RuntimeError):
        asyncio.run(store.put_stream_async(sha256_hex(other), [other], MB, on_stored=fails))
    # the bytes are safe under their name; the retry finds them and runs its hook again
    assert store.has(sha256_hex(other)) and tmp_files(store) == []
    again = asyncio.run(store.put_stream_async(sha256_hex(other), [other], MB, on_stored=on_stored))
    assert again.created is False and seen[-1][2] is False


def test_async_accepts_sync_iterable(store):
    data = os.urandom(5000)
    res = asyncio.run(store.put_stream_async(sha256_hex(data), chunked(data), MB))
    assert res.created


def test_async_failures_leave_nothing(store):
    data = os.urandom(100_000)
    sha = sha256_hex(data)
    with pytest.raises(ConnectionResetError):
        asyncio.run(store.put_stream_async(sha, _agen(chunked(data, 10_000), fail_at=5), MB))
    with pytest.raises(TooLarge):
        asyncio.run(store.put_stream_async(sha, _agen(chunked(data, 10_000)), 50_000))
    with pytest.raises(HashMismatch):
        asyncio.run(store.put_stream_async("f" * 64, _agen(chunked(data, 10_000)), MB))
    assert blob_files(store) == []
    assert tmp_files(store) == []
    assert asyncio.run(store.put_stream_async(sha, _agen(chunked(data, 10_000)), MB)).created


def test_async_cancelled_upload_leaves_nothing(store):
    data = os.urandom(20_000)
    sha = sha256_hex(data)

    async def main():
        started = asyncio.Event()

        async def slow():
            yield data[:10_000]
            started.set()
            await asyncio.sleep(3600)  # the client stalls ...
            yield data[10_000:]

        task = asyncio.create_task(store.put_stream_async(sha, slow(), MB))
        await started.wait()
        task.cancel()  # ... and the server gives up on it
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert not store.has(sha)
    assert tmp_files(store) == []


def test_sync_put_refuses_async_iterable(store):
    gen = _agen([b"x"])
    with pytest.raises(TypeError):
        store.put_stream("0" * 64, gen, MB)
    asyncio.run(gen.aclose())


def _bytes_whose_sha_starts(prefix: str, not_prefix: str | None = None) -> bytes:
    while True:
        data = os.urandom(16)
        sha = sha256_hex(data)
        if sha.startswith(prefix) and not (not_prefix and sha.startswith(not_prefix)):
            return data


def test_every_directory_on_the_way_to_a_blob_is_durable_before_it_is_acknowledged(store, monkeypatch):
    from app.photos import storage

    synced: list[Path] = []
    real = storage._fsync_dir
    monkeypatch.setattr(storage, "_fsync_dir", lambda p: (synced.append(Path(p)), real(p)))
    data = os.urandom(3000)
    sha = sha256_hex(data)
    store.put_stream(sha, [data], MB)
    fan1, fan2 = store.root / sha[:2], store.root / sha[:2] / sha[2:4]
    # each new directory's entry, then the blob's own entry
    assert synced == [store.root, fan1, fan2]

    # directories made by another process (a worker that has not fsynced them yet, or crashed before
    # it did): this process cannot tell, so it makes their entries durable itself, once
    other = _bytes_whose_sha_starts("", not_prefix=sha[:2])
    other_sha = sha256_hex(other)
    other_dir = store.root / other_sha[:2] / other_sha[2:4]
    other_dir.mkdir(parents=True, exist_ok=True)
    synced.clear()
    store.put_stream(other_sha, [other], MB)
    assert synced == [store.root, other_dir.parent, other_dir]

    # once made durable by this process, a directory costs only the blob's own entry
    same_dir = _bytes_whose_sha_starts(sha[:4])
    synced.clear()
    store.put_stream(sha256_hex(same_dir), [same_dir], MB)
    assert synced == [fan2]
    # ... and another process (a new store on the same root) makes sure once for itself
    again = FilesystemBlobStore(store.root)
    same_dir_too = _bytes_whose_sha_starts(sha[:4])
    synced.clear()
    again.put_stream(sha256_hex(same_dir_too), [same_dir_too], MB)
    assert synced == [store.root, fan1, fan2]


def test_an_upload_that_finds_its_photo_already_linked_makes_the_entry_durable_before_answering(store, monkeypatch):
    """A retry racing the first attempt: the first linked the file and has not fsynced its directory
    yet; the retry answers too, so it must not answer before that entry is on disk."""
    from app.photos import storage

    data = os.urandom(3000)
    sha = sha256_hex(data)
    dest = store.root / sha[:2] / sha[2:4] / sha
    dest.parent.mkdir(parents=True)
    dest.write_bytes(data)  # as the first attempt left it: linked, directory not yet fsynced
    synced: list[Path] = []
    real = storage._fsync_dir
    monkeypatch.setattr(storage, "_fsync_dir", lambda p: (synced.append(Path(p)), real(p)))
    put = store.put_stream(sha, [data], MB)
    assert not put.created and synced[-1] == dest.parent
