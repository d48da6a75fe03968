"""An upload's bytes written to its temp file around the page cache (O_DIRECT).

A photo is written once and read rarely: its thumbnail is made from it once, an office opens it
now and then. Written through the page cache, every page of it is first copied into a newly
allocated cache page. Under photo load that copy was the largest single cost of an upload: 27 % of
a worker's CPU (`perf`, docs/PERFORMANCE.md), on a VM whose free memory is handed back to the host,
so that each new page also faults there. And the cached photos push the database's pages out.

So an upload's bytes are gathered in a page-aligned staging buffer (``STAGE_BYTES``; a larger
photo goes a stage at a time) and written with O_DIRECT, straight from the buffer to the disk,
except for what the upload's own check reads back at once:

* the first ``HEAD_BYTES`` (the sniff, the image header and its EXIF), and
* the last block or two (the end-marker check reads the last 4 KB),

which go through the page cache, where the check finds them without a disk read; and except PNGs
(rare from phones), whose check reads every chunk back: they go through the page cache whole.

Where the filesystem refuses O_DIRECT (tmpfs before Linux 6.6, some network filesystems; macOS has
no O_DIRECT) the bytes are written the ordinary way, by that store from then on. Either way it is
the fsync afterwards that makes them durable.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import mmap
import os
import threading

log = logging.getLogger(__name__)

# O_DIRECT wants the buffer's address, the file offset and the length aligned to the device's
# logical block size (512 or 4096 bytes): a page-aligned mapping and multiples of 4096 suit both.
ALIGN = 4096
HEAD_BYTES = 128 * 1024  # a JPEG's EXIF segment is at most 64 KB; a multiple of ALIGN
TAIL_BYTES = 4096  # what imaging._jpeg_complete reads from the end
# What an upload holds in memory, whatever the photo's size: each full stage is written out in a
# worker-thread hop, the last in the upload's finishing hop. Against writing through the page cache
# (interleaved servers, 3 MP photos): 2 MiB stages -34 % CPU, 512 KiB -29 %, 256 KiB -25 %.
STAGE_BYTES = 512 * 1024
KEEP_STAGES = 2  # a worker takes about two photos at a time under load

O_DIRECT = getattr(os, "O_DIRECT", 0)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _align_down(n: int) -> int:
    return n - n % ALIGN


class Staging:
    """A store's staging buffers and whether its filesystem takes O_DIRECT.

    Buffers are reused, up to ``keep`` of them: a fresh mapping's pages fault in on first touch
    (on a VM, in the host too), which is the cost this module exists to avoid.
    """

    def __init__(self, stage_bytes: int = STAGE_BYTES, keep: int = KEEP_STAGES, direct: bool = True):
        if stage_bytes < 2 * ALIGN or stage_bytes % ALIGN:  # a drain keeps one block back
            raise ValueError(f"stage_bytes must be a multiple of {ALIGN}, at least {2 * ALIGN}")
        self.stage_bytes = stage_bytes
        self.keep = keep
        self.direct = direct and O_DIRECT != 0
        self.direct_bytes = 0  # written with O_DIRECT so far (a statistic: threads may race on it)
        self._free: list[mmap.mmap] = []
        self._lock = threading.Lock()

    def take(self) -> mmap.mmap:
        with self._lock:
            if self._free:
                return self._free.pop()
        # private: a stage is this process's alone, even across a fork
        return mmap.mmap(-1, self.stage_bytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)

    def give(self, buf: mmap.mmap) -> None:
        with self._lock:
            if len(self._free) < self.keep:
                self._free.append(buf)
                return
        try:
            buf.close()
        except BufferError:
            # a view of it is still alive (say, in the traceback of a failed write): the mapping goes
            # when that view does
            pass

    def idle(self) -> int:
        """Buffers kept for the next uploads."""
        with self._lock:
            return len(self._free)

    def refused(self, exc: OSError) -> None:
        if self.direct:
            log.warning("the blob store's filesystem refuses O_DIRECT (%s): photos are written through the "
                        "page cache from now on", str(exc))  # str: a kept log record must not pin a stage
        self.direct = False


def _pwrite_all(fd: int, stage: memoryview, a: int, b: int, base: int) -> None:
    """Write stage[a - base:b - base] at file offset a. Each slice of the stage is released as soon as
    it is written, even when the write fails: a slice kept alive (by a traceback) would stop the
    stage's mapping from being closed."""
    while a < b:  # a write may be short
        with stage[a - base:b - base] as piece:
            n = os.pwrite(fd, piece, a)
        if n == 0:
            raise OSError(errno.EIO, "write made no progress")
        a += n


class StagedFile:
    """Writes one stream of chunks to ``fd`` from offset 0: ``stage`` each chunk; when it returns a
    rest, the stage is full: ``drain()`` (blocking, off the event loop) and stage the rest; at the
    end ``drain(final=True)``, then fsync. ``close()`` hands the buffer back, whatever happened."""

    def __init__(self, fd: int, staging: Staging):
        self.fd = fd
        self.staging = staging
        self.buf: mmap.mmap | None = staging.take()
        self.view = memoryview(self.buf)
        self.staged = 0  # bytes in the stage, from its start
        self.offset = 0  # where the stage's first byte goes in the file (a multiple of ALIGN)
        self.through_cache = False

    def stage(self, chunk: bytes | bytearray | memoryview) -> memoryview | None:
        """Copy ``chunk`` into the stage; what did not fit (the stage is then full), or None."""
        room = len(self.view) - self.staged
        n = len(chunk)
        if n <= room:
            self.view[self.staged:self.staged + n] = chunk
            self.staged += n
            return None
        rest = memoryview(chunk)
        self.view[self.staged:] = rest[:room]
        self.staged += room
        return rest[room:]

    def drain(self, final: bool = False) -> None:
        """Write the stage out. Before the end, its last block stays behind (moved to the stage's
        start): the file's last bytes, which the check reads, are thus always written by the final
        drain, through the page cache."""
        start, end = self.offset, self.offset + self.staged
        keep_back = 0 if final else ALIGN
        upto = end - keep_back  # a multiple of ALIGN when not final: a full stage is
        lo = max(start, HEAD_BYTES)  # the head goes through the page cache
        hi = _align_down(upto - TAIL_BYTES) if final else upto
        if self.offset == 0 and self.staged:
            # a PNG's check reads it all back (every chunk's CRC): from the page cache, not the disk
            self.through_cache = bytes(self.view[:len(PNG_SIGNATURE)]) == PNG_SIGNATURE
        if self.staging.direct and not self.through_cache and lo < hi:
            self._write(start, lo)
            self._write_direct(lo, hi)
            self._write(hi, upto)
        else:
            self._write(start, upto)
        if keep_back:
            self.view[:keep_back] = self.view[upto - start:end - start]
        self.offset = upto
        self.staged = keep_back

    def _write(self, a: int, b: int) -> None:
        if a < b:
            _pwrite_all(self.fd, self.view, a, b, self.offset)

    def _write_direct(self, a: int, b: int) -> None:
        try:
            flags = fcntl.fcntl(self.fd, fcntl.F_GETFL)
            fcntl.fcntl(self.fd, fcntl.F_SETFL, flags | O_DIRECT)
            try:
                _pwrite_all(self.fd, self.view, a, b, self.offset)
            finally:
                fcntl.fcntl(self.fd, fcntl.F_SETFL, flags)
        except OSError as exc:
            if exc.errno != errno.EINVAL:  # EINVAL: not for this filesystem (or its block size)
                raise
            self.staging.refused(exc)
            self._write(a, b)  # at the same offsets: whatever part went through is rewritten
            return
        self.staging.direct_bytes += b - a

    def close(self) -> None:
        buf, self.buf = self.buf, None
        if buf is not None:
            self.view.release()
            self.staging.give(buf)
