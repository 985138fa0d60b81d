"""Durable spool so every audit record reaches PostgreSQL across a database outage or a crash:
fsync'ed JSON-lines segments (group commit), drained in order by a thread, with an atomic cursor."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from cca.fsync import fsync_dir

log = logging.getLogger("cca.serving.spool")

Sink = Callable[[list[dict[str, Any]]], None]
Batch = tuple[list[dict[str, Any]], tuple[int, int], int]  # records, end position, lines used
_CURSOR, _LOCK, _MAX_BACKOFF_S = "cursor.json", ".lock", 5.0
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)  # strict: jsonb rejects NaN


class SpoolLockedError(RuntimeError):
    """Another AuditSpool, in this process or another, already owns the directory."""


class AuditSpool:
    """A write-ahead log on local disk, drained into a sink (PostgreSQL) by a background thread.
    Delivery is at-least-once: the sink must be idempotent (records carry a unique "record_id")."""

    def __init__(self, directory: Path, sink: Sink, *, flush_interval_s: float = 0.05,
                 max_batch: int = 1000, segment_bytes: int = 8_000_000,
                 retire_after_s: float = 60.0,
                 on_sink_error: Callable[[Exception], None] | None = None) -> None:
        if max_batch < 1 or segment_bytes < 1 or flush_interval_s <= 0:
            raise ValueError("max_batch, segment_bytes and flush_interval_s must be positive")
        self._dir = Path(directory)
        self._dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        with contextlib.suppress(OSError):
            os.chmod(self._dir, 0o700)  # records may hold customer text
        self._lock_fd = os.open(self._dir / _LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise SpoolLockedError(
                f"audit spool directory {self._dir} is already in use by another AuditSpool; "
                "give each worker process its own directory") from None
        self._sink, self._on_sink_error = sink, on_sink_error or (lambda exc: None)
        self._interval, self._max_batch, self._seg_max = flush_interval_s, max_batch, segment_bytes
        self._retire_s, self._active_opened = retire_after_s, time.monotonic()
        self._wcond = threading.Condition()  # writer state and group commit
        self._dcond = threading.Condition()  # delivered position (cursor) and pending count
        self._wake, self._stop = threading.Event(), threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = self._closing = self._abandoned = self._syncing = self._outage = False
        self._write_seq = self._synced_seq = self._failures = self._flushed = 0
        self._deadline, self._healthy, self._last_error = float("inf"), True, None
        self._inflight: Batch | None = None
        self._cursor, self._pending = self._recover()
        self._active_id, self._active_size = max([*self._segments(), self._cursor[0]]) + 1, 0
        self._fd = self._open_segment(self._active_id)
        self._fsyncer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit-fsync")

    def append(self, records: Sequence[dict[str, Any]], *, deliver_now: bool = True) -> None:
        """Durable when it returns (written, flushed and fsync'ed). Thread-safe; concurrent
        appenders share one fsync (group commit), so a busy service pays few of them.

        ``deliver_now=False`` leaves the records for the flusher's next round (within
        ``flush_interval_s``): under load one transaction then carries many requests' records
        instead of one each."""
        seq = self._put(records, deliver_now)
        if seq:
            with self._wcond:
                self._sync_until(seq)

    def append_nowait(self, records: Sequence[dict[str, Any]], *,
                      deliver_now: bool = True) -> Future[None]:
        """Written when it returns, durable when the future is done (it holds the fsync's
        error, if any). The fsync runs on the spool's own thread, so the caller (the
        service's cascade thread) goes on with its next batch instead of waiting for the disk.
        """
        seq = self._put(records, deliver_now)
        if not seq:
            done: Future[None] = Future()
            done.set_result(None)
            return done
        return self._fsyncer.submit(self._sync_to, seq)

    def _put(self, records: Sequence[dict[str, Any]], deliver_now: bool) -> int:
        """Write (not yet fsync'ed); the write's sequence number, 0 for no records."""
        if not records:
            return 0
        if not all(isinstance(r, dict) for r in records):
            raise TypeError("audit records must be dicts")
        data = "".join(_ENCODER.encode(r) + "\n" for r in records).encode()
        with self._wcond:  # encoded first: a bad record raises before anything is written
            if self._closing:
                raise RuntimeError("audit spool is closed")
            self._write(data)
            self._write_seq += 1
            with self._dcond:
                self._pending += len(records)
            if deliver_now:
                self._wake.set()
            return self._write_seq

    def _sync_to(self, seq: int) -> None:
        with self._wcond:
            self._sync_until(seq)

    def start(self) -> None:
        """Start the flusher; it first delivers whatever an earlier process left on disk."""
        if self._closed:
            raise RuntimeError("audit spool is closed")
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="audit-spool", daemon=True)
            self._thread.start()

    def flush(self, timeout_s: float | None = None) -> bool:
        """Block until everything appended before the call reached the sink; False on timeout."""
        with self._wcond:
            target = (self._active_id, self._active_size)
        self._wake.set()
        with self._dcond:
            return self._dcond.wait_for(lambda: self._cursor >= target, timeout_s)

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop after a last delivery attempt; undelivered records stay on disk for next start."""
        if self._closed:
            return
        with self._wcond:
            self._closing = True  # appends are refused from here on
        # What was appended without waiting gets its fsync (and its callbacks run) before the
        # flusher's last delivery, which so covers every record written.
        self._fsyncer.shutdown(wait=True)
        self._deadline = time.monotonic() + timeout_s
        self._stop.set()  # the flusher notices within flush_interval_s
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():  # stuck in the sink: it must not move the cursor now
                self._abandoned = True
                log.warning("audit spool flusher did not stop within %.1f s", timeout_s)
        with self._wcond:
            self._closed = True
            self._wcond.wait_for(lambda: not self._syncing)
            os.fsync(self._fd)
            os.close(self._fd)
            self._synced_seq = self._write_seq
            self._wcond.notify_all()
        if not self._abandoned and self._cursor == (self._active_id, self._active_size):
            # all delivered: the raw text in the last segment goes too (see _retire_delivered)
            self._commit((self._active_id + 1, 0), 0, sync_dir=True)
            self._seg_path(self._active_id).unlink(missing_ok=True)
        fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
        os.close(self._lock_fd)

    @property
    def pending(self) -> int:  # appended or recovered, not yet delivered
        return self._pending

    @property
    def healthy(self) -> bool:  # False while the sink is failing
        return self._healthy

    @property
    def last_error(self) -> str | None:
        return self._last_error

    def _seg_path(self, seg: int) -> Path:
        return self._dir / f"seg-{seg:012d}.jsonl"

    def _segments(self) -> list[int]:
        return sorted(int(p.stem[4:]) for p in self._dir.glob("seg-" + "[0-9]" * 12 + ".jsonl"))

    def _open_segment(self, seg: int) -> int:
        fd = os.open(self._seg_path(seg), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        fsync_dir(self._dir)  # the new name must survive a crash, not only the data
        return fd

    def _write(self, data: bytes) -> None:
        """Append whole lines to the active segment, sealing it first when full (holds _wcond)."""
        while self._active_size and self._active_size + len(data) > self._seg_max:
            if self._syncing:  # never close a file another thread is fsync'ing
                self._wcond.wait()
                continue
            new_fd = self._open_segment(self._active_id + 1)
            os.fsync(self._fd)
            os.close(self._fd)
            self._synced_seq = self._write_seq
            self._fd, self._active_id, self._active_size = new_fd, self._active_id + 1, 0
            self._active_opened = time.monotonic()
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view):]
        except BaseException:  # never leave half a line in the middle of a segment
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._active_size)
            raise
        self._active_size += len(data)

    def _sync_until(self, seq: int) -> None:
        """Group commit: one thread fsyncs for every write made so far, the others wait."""
        while self._synced_seq < seq:
            if self._syncing:
                self._wcond.wait()
                continue
            self._syncing, target, fd = True, self._write_seq, self._fd
            self._wcond.release()
            try:
                os.fsync(fd)
            finally:
                self._wcond.acquire()
                self._syncing = False
                self._wcond.notify_all()
            self._synced_seq = max(self._synced_seq, target)

    def _recover(self) -> tuple[tuple[int, int], int]:
        """Delivered position from the cursor file, and how many records are left after it."""
        seg, off, path = 0, 0, self._dir / _CURSOR
        try:
            if path.exists():
                data = json.loads(path.read_text())
                seg, off = int(data["segment"]), int(data["offset"])
        except (OSError, ValueError, KeyError, TypeError):
            log.warning("audit spool cursor unreadable; redelivering from the oldest segment")
        backlog = 0
        for sid in self._segments():
            if sid < seg:  # delivered; its deletion was lost in a crash
                self._seg_path(sid).unlink(missing_ok=True)
                continue
            with open(self._seg_path(sid), "rb") as f:
                f.seek(off if sid == seg else 0)
                while chunk := f.read(1 << 20):
                    backlog += chunk.count(b"\n")
        return (seg, off), backlog

    def _commit(self, pos: tuple[int, int], consumed: int, *, sync_dir: bool = False) -> None:
        """Persist the cursor atomically (tmp + fsync + replace), then publish it."""
        if self._abandoned:
            return
        tmp = self._dir / (_CURSOR + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, json.dumps({"segment": pos[0], "offset": pos[1]}).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self._dir / _CURSOR)
        if sync_dir:  # before a segment is deleted the cursor must durably point past it
            fsync_dir(self._dir)
        with self._dcond:
            self._cursor, self._pending = pos, self._pending - consumed
            self._dcond.notify_all()

    def _read_batch(self) -> Batch | None:
        """Up to max_batch records after the cursor, read from disk; None when caught up."""
        while True:
            seg, off = self._cursor
            with self._wcond:
                active, limit = self._active_id, self._active_size
            sealed, records, pos, consumed = seg < active, [], off, 0
            with contextlib.suppress(FileNotFoundError), open(self._seg_path(seg), "rb") as f:
                f.seek(off)
                while len(records) < self._max_batch:
                    line = f.readline() if sealed else f.readline(limit - pos)
                    if not line.endswith(b"\n"):
                        if line and sealed:  # torn by a crash mid-write: never acknowledged
                            log.warning("skipped a torn %d-byte tail in %s", len(line), f.name)
                            pos += len(line)
                        break
                    pos, consumed = pos + len(line), consumed + 1
                    rec = None
                    with contextlib.suppress(ValueError):
                        rec = json.loads(line)
                    if isinstance(rec, dict):
                        records.append(rec)
                    else:
                        log.warning("skipped an unreadable audit line in %s", f.name)
            if pos > off:
                return records, (seg, pos), consumed
            if not sealed:
                return None
            nxt = min(s for s in [*self._segments(), active] if s > seg)
            self._commit((nxt, 0), 0, sync_dir=True)
            self._seg_path(seg).unlink(missing_ok=True)

    def _drain(self) -> bool:
        """Deliver batches until caught up; False when delivery failed (the caller backs off)."""
        while not (self._stop.is_set() and time.monotonic() > self._deadline):
            try:
                batch = self._inflight or self._read_batch()
                if batch is not None:
                    self._inflight = batch  # retried as is: nothing re-read, nothing dropped
                    if batch[0]:
                        self._sink(batch[0])
                    self._commit(batch[1], batch[2])
                    self._inflight = None
            except Exception as exc:
                self._failures += 1
                # class and first line only: database errors put row values in later lines
                first = (str(exc).splitlines() or [""])[0]
                self._healthy, self._last_error = False, f"{type(exc).__name__}: {first}"[:200]
                if not self._outage:
                    self._outage, self._flushed = True, 0
                    log.warning("audit delivery failing (%s); spooling in %s", self._last_error,
                                self._dir)
                with contextlib.suppress(Exception):  # a metrics hook must not stop delivery
                    self._on_sink_error(exc)
                return False
            self._failures, self._healthy = 0, True
            if batch is None:
                self._retire_delivered()
                if self._outage:
                    self._outage = False
                    log.info("audit sink recovered; %d spooled records flushed", self._flushed)
                return True
            self._flushed += len(batch[0])
        return True

    def _retire_delivered(self) -> None:
        """Records hold raw ticket text: once every record of the active segment is delivered
        and the segment is older than ``retire_after_s``, writing moves to a new segment and
        the old one is deleted, so the text leaves the disk within that time (retention and
        erasure only reach PostgreSQL), not when ``segment_bytes`` have piled up."""
        with self._wcond:
            if (self._closing or self._syncing or not self._active_size
                    or time.monotonic() - self._active_opened < self._retire_s
                    or self._cursor != (self._active_id, self._active_size)):
                return
            old, new_fd = self._active_id, self._open_segment(self._active_id + 1)
            os.close(self._fd)  # all of it delivered: nothing left to fsync
            self._fd, self._active_id, self._active_size = new_fd, old + 1, 0
            self._active_opened, self._synced_seq = time.monotonic(), self._write_seq
        self._commit((old + 1, 0), 0, sync_dir=True)
        self._seg_path(old).unlink(missing_ok=True)

    def _run(self) -> None:
        while True:
            ok = self._drain()
            if self._stop.is_set():
                return
            if ok:
                self._wake.wait(self._interval)
                self._wake.clear()
            else:  # appends do not cut a backoff short; close does
                backoff = self._interval * 2 ** min(self._failures - 1, 30)
                self._stop.wait(min(_MAX_BACKOFF_S, backoff))
