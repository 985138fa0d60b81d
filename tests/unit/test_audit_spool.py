"""The audit spool: ordered batched delivery, outages, crash recovery (SIGKILL), torn lines,
segment rotation, bounded memory and concurrent appenders. The sink is a plain callable."""

from __future__ import annotations

import json
import logging
import os
import signal
import stat
import subprocess
import sys
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from serving import audit_spool
from serving.audit_spool import AuditSpool, SpoolLockedError
from tests.conftest import ROOT, wait_until

Records = list[dict[str, Any]]


class Sink:
    """Records every batch; raises while `fail` is set or `fail_times` is above zero."""

    def __init__(self, fail_times: int = 0, fail: bool = False) -> None:
        self.fail_times, self.fail = fail_times, fail
        self.batches: list[Records] = []
        self.calls: list[float] = []
        self.lock = threading.Lock()

    def __call__(self, batch: Records) -> None:
        with self.lock:
            self.calls.append(time.monotonic())
            if self.fail or self.fail_times > 0:
                self.fail_times -= 1
                raise ConnectionError("database unavailable")
            self.batches.append(list(batch))

    @property
    def ids(self) -> list[str]:
        with self.lock:
            return [r["record_id"] for b in self.batches for r in b]


def recs(start: int, n: int, **extra: Any) -> Records:
    return [{"record_id": f"r{i}", "n": i, **extra} for i in range(start, start + n)]


def segments(d: Path) -> list[Path]:
    return sorted(d.glob("seg-*.jsonl"))


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    return tmp_path / "spool"


def test_delivers_in_order_in_batches_and_counts_pending(spool_dir: Path) -> None:
    sink = Sink()
    spool = AuditSpool(spool_dir, sink, flush_interval_s=0.01, max_batch=7)
    spool.append(recs(0, 50))  # before start: kept on disk, delivered once started
    assert spool.pending == 50
    assert not spool.flush(timeout_s=0.05)  # no flusher yet
    spool.start()
    assert spool.flush(timeout_s=5)
    assert [len(b) for b in sink.batches] == [7] * 7 + [1]
    for i in range(50, 80):
        spool.append(recs(i, 1))
    assert spool.flush(timeout_s=5)
    assert sink.ids == [f"r{i}" for i in range(80)]
    assert spool.pending == 0 and spool.healthy and spool.last_error is None
    assert spool.flush(timeout_s=0)  # nothing outstanding
    spool.close()


def test_appends_left_for_the_next_round_share_one_delivery(spool_dir: Path) -> None:
    sink = Sink()
    spool = AuditSpool(spool_dir, sink, flush_interval_s=1.0)
    spool.start()
    assert wait_until(lambda: len(sink.calls) == 0 and spool.pending == 0)
    time.sleep(0.05)  # the flusher's first round (nothing to deliver) is over
    t0 = time.monotonic()
    for i in range(20):
        spool.append(recs(i, 1), deliver_now=False)
    assert spool.pending == 20 and sink.batches == []  # durable on disk, not yet delivered
    assert wait_until(lambda: spool.pending == 0, timeout=3)
    assert time.monotonic() - t0 < 1.0 + 0.5  # within one interval (plus scheduling)
    assert [len(b) for b in sink.batches] == [20]  # one transaction for all of them
    spool.append(recs(20, 1))  # the default wakes the flusher at once
    assert wait_until(lambda: spool.pending == 0, timeout=0.6)
    spool.append(recs(21, 1), deliver_now=False)
    assert spool.flush(timeout_s=0.6)  # flush() does not wait for the round either
    assert sink.ids == [f"r{i}" for i in range(22)]
    spool.close()


def test_files_are_private(spool_dir: Path) -> None:
    spool = AuditSpool(spool_dir, Sink(), flush_interval_s=0.01)
    spool.start()
    spool.append(recs(0, 3))
    assert spool.flush(timeout_s=5)
    assert stat.S_IMODE(spool_dir.stat().st_mode) == 0o700
    for f in spool_dir.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f.name
    spool.close()


def test_bad_records_and_closed_spool_are_refused(spool_dir: Path) -> None:
    spool = AuditSpool(spool_dir, Sink())
    with pytest.raises(TypeError):
        spool.append([{"record_id": "ok"}, ["not", "a", "dict"]])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        spool.append([{"record_id": "x", "at": object()}])
    with pytest.raises(ValueError):  # PostgreSQL's jsonb would reject it forever
        spool.append([{"record_id": "x", "p": float("nan")}])
    assert spool.pending == 0
    assert all(p.stat().st_size == 0 for p in segments(spool_dir))  # all-or-nothing
    spool.close()
    with pytest.raises(RuntimeError, match="closed"):
        spool.append(recs(0, 1))


def test_outage_loses_nothing_flips_health_and_backs_off(
        spool_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="cca.serving.spool")
    sink, errors = Sink(fail_times=6), []
    spool = AuditSpool(spool_dir, sink, flush_interval_s=0.01, max_batch=30,
                       on_sink_error=errors.append)
    spool.start()
    for i in range(0, 100, 10):
        spool.append(recs(i, 10, text="SECRET customer text"))
    assert wait_until(lambda: not spool.healthy)
    assert spool.last_error == "ConnectionError: database unavailable"
    assert spool.pending == 100
    assert spool.flush(timeout_s=10)
    assert spool.healthy and spool.pending == 0
    assert sorted(sink.ids) == sorted(f"r{i}" for i in range(100))
    assert len(sink.ids) == len(set(sink.ids))  # a failed batch never half-lands here
    assert len(errors) == 6 and all(isinstance(e, ConnectionError) for e in errors)
    gaps = [b - a for a, b in zip(sink.calls[:6], sink.calls[1:7], strict=True)]
    assert gaps[-1] > 4 * gaps[0] and gaps[-1] >= 0.15  # 0.01 doubling to 0.32 s
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1  # one warning per outage, not per retry
    assert wait_until(lambda: any(r.levelno == logging.INFO for r in caplog.records))
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert infos == ["audit sink recovered; 100 spooled records flushed"]
    assert "SECRET" not in caplog.text
    spool.close()


def test_backoff_is_capped(spool_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(audit_spool, "_MAX_BACKOFF_S", 0.04)
    sink = Sink(fail_times=12)
    spool = AuditSpool(spool_dir, sink, flush_interval_s=0.01)
    spool.start()
    spool.append(recs(0, 1))
    assert spool.flush(timeout_s=5)
    gaps = [b - a for a, b in zip(sink.calls, sink.calls[1:], strict=False)]
    assert max(gaps) < 0.2 and sink.ids == ["r0"]
    spool.close()


def test_close_keeps_undelivered_records_for_the_next_start(spool_dir: Path) -> None:
    first = AuditSpool(spool_dir, Sink(fail=True), flush_interval_s=0.01)
    first.start()
    first.append(recs(0, 20))
    first.close(timeout_s=1)
    assert first.pending == 20
    sink = Sink()
    second = AuditSpool(spool_dir, sink, flush_interval_s=0.01)
    assert second.pending == 20
    second.start()
    assert second.flush(timeout_s=5)
    assert sink.ids == [f"r{i}" for i in range(20)]
    second.close()
    third = AuditSpool(spool_dir, Sink())  # the cursor says all were delivered
    assert third.pending == 0
    third.close()


CHILD = """
import importlib.util, sys
from pathlib import Path
spec = importlib.util.spec_from_file_location("audit_spool", sys.argv[2])
mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
def sink(batch):
    raise ConnectionError("database down")
spool = mod.AuditSpool(Path(sys.argv[1]), sink, flush_interval_s=0.01, segment_bytes=3000)
spool.start()
i = 0
while True:
    spool.append([{"record_id": f"r{i}", "n": i, "text": "ticket text " * 3}])
    print(i, flush=True)
    i += 1
"""


def test_crash_recovery_after_sigkill(spool_dir: Path) -> None:
    module = ROOT / "serving" / "audit_spool.py"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(spool_dir), str(module)],
                             cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    acked = []
    for line in child.stdout:
        acked.append(int(line))
        if len(acked) >= 600:
            break
    os.kill(child.pid, signal.SIGKILL)
    acked += [int(line) for line in child.stdout]  # acks already in the pipe
    child.wait(timeout=10)
    assert child.returncode == -signal.SIGKILL
    assert len(segments(spool_dir)) > 3  # it rotated before dying
    sink = Sink()
    spool = AuditSpool(spool_dir, sink, flush_interval_s=0.01)
    assert spool.pending >= len(acked)
    spool.start()
    assert spool.flush(timeout_s=10)
    delivered = [int(i[1:]) for i in sink.ids]
    assert delivered == sorted(delivered) and len(set(delivered)) == len(delivered)
    assert set(acked) <= set(delivered) and max(delivered) <= max(acked) + 1
    assert spool.pending == 0
    spool.close()


def test_torn_last_line_is_skipped_and_complete_records_kept(
        spool_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    first = AuditSpool(spool_dir, Sink())
    first.append(recs(0, 5))
    first.close()
    (seg,) = segments(spool_dir)
    with seg.open("ab") as f:
        f.write(b'{"record_id":"torn","te')  # crash in the middle of a write
    sink = Sink()
    spool = AuditSpool(spool_dir, sink, flush_interval_s=0.01)
    assert spool.pending == 5
    spool.start()
    spool.append(recs(5, 2))
    assert spool.flush(timeout_s=5)
    assert sink.ids == [f"r{i}" for i in range(7)]
    assert "torn" in caplog.text and not seg.exists()
    spool.close()


def test_unreadable_line_in_the_middle_is_skipped(spool_dir: Path) -> None:
    first = AuditSpool(spool_dir, Sink())
    first.append(recs(0, 2))
    (seg,) = segments(spool_dir)
    with seg.open("ab") as f:
        f.write(b"\x00\x00garbage\n")
    first.close()
    first = AuditSpool(spool_dir, Sink())  # a later process appends to a new segment
    first.append(recs(2, 2))
    first.close()
    sink = Sink()
    spool = AuditSpool(spool_dir, sink, flush_interval_s=0.01)
    assert spool.pending == 5
    spool.start()
    assert spool.flush(timeout_s=5)
    assert sink.ids == ["r0", "r1", "r2", "r3"] and spool.pending == 0
    spool.close()


def test_segments_rotate_and_delivered_ones_are_deleted(spool_dir: Path) -> None:
    sink = Sink(fail=True)
    spool = AuditSpool(spool_dir, sink, flush_interval_s=0.01, segment_bytes=500)
    spool.start()
    for i in range(100):
        spool.append(recs(i, 1))
    assert len(segments(spool_dir)) >= 4
    assert all(p.stat().st_size <= 500 for p in segments(spool_dir))
    sink.fail = False
    assert spool.flush(timeout_s=5)
    assert sink.ids == [f"r{i}" for i in range(100)]
    assert len(segments(spool_dir)) == 1  # only the active segment is left
    spool.close()


def test_memory_stays_bounded_during_a_long_outage(spool_dir: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(audit_spool, "_MAX_BACKOFF_S", 0.05)  # prompt retry once it is back
    n, max_batch = 50_000, 500
    seen = {"next": 0, "calls": 0, "largest": 0}

    def sink(batch: Records) -> None:  # checks order without keeping the records
        if fail.is_set():
            raise ConnectionError("down")
        for r in batch:
            assert r["n"] == seen["next"]
            seen["next"] += 1
        seen["calls"] += 1
        seen["largest"] = max(seen["largest"], len(batch))

    fail = threading.Event()
    fail.set()
    spool = AuditSpool(spool_dir, sink, flush_interval_s=0.01, max_batch=max_batch,
                       segment_bytes=2_000_000)
    spool.start()
    text = "card payment declined twice " * 2
    for i in range(0, n, 1000):
        spool.append(recs(i, 1000, text=text))
    assert spool.pending == n
    on_disk = sum(p.stat().st_size for p in segments(spool_dir))
    assert on_disk > 4_000_000
    tracemalloc.start()
    try:
        fail.clear()
        assert spool.flush(timeout_s=15)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert seen["next"] == n and spool.pending == 0
    assert seen["largest"] == max_batch and seen["calls"] >= n // max_batch
    assert peak < 2_000_000, f"peak {peak} bytes while draining {on_disk} bytes"
    assert len(segments(spool_dir)) == 1
    spool.close()


def test_concurrent_appenders_deliver_exactly_the_appended_set(spool_dir: Path) -> None:
    sink = Sink()
    spool = AuditSpool(spool_dir, sink, flush_interval_s=0.01, max_batch=64)
    spool.start()
    barrier = threading.Barrier(8)

    def worker(t: int) -> None:
        barrier.wait()
        for i in range(150):
            spool.append([{"record_id": f"t{t}-{i}", "t": t, "i": i}])

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert spool.flush(timeout_s=10)
    ids = sink.ids
    assert len(ids) == len(set(ids)) == 8 * 150
    assert set(ids) == {f"t{t}-{i}" for t in range(8) for i in range(150)}
    for t in range(8):  # each thread's records arrive in the order it appended them
        mine = [r["i"] for b in sink.batches for r in b if r["t"] == t]
        assert mine == list(range(150))
    spool.close()


def test_concurrent_appenders_share_fsyncs(spool_dir: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    spool = AuditSpool(spool_dir, Sink())  # no flusher: count only the appenders' fsyncs
    real_fsync, count = os.fsync, [0]

    def slow_fsync(fd: int) -> None:
        count[0] += 1
        time.sleep(0.005)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", slow_fsync)
    barrier = threading.Barrier(20)

    def worker(t: int) -> None:
        barrier.wait()
        for i in range(10):
            spool.append([{"record_id": f"t{t}-{i}"}])

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(20)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert spool.pending == 200
    assert count[0] < 200 / 4, f"{count[0]} fsyncs for 200 appends"
    monkeypatch.undo()
    spool.close()
    lines = b"".join(p.read_bytes() for p in segments(spool_dir)).splitlines()
    assert sorted(json.loads(x)["record_id"] for x in lines) == sorted(
        f"t{t}-{i}" for t in range(20) for i in range(10))


def test_append_nowait_fsyncs_off_the_caller_and_reports_failures(
        spool_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spool = AuditSpool(spool_dir, Sink())
    real_fsync, where, release = os.fsync, [], threading.Event()

    def slow_fsync(fd: int) -> None:
        where.append(threading.current_thread().name)
        release.wait(5)  # a slow disk: the caller must not wait for it
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", slow_fsync)
    start = time.monotonic()
    futures = [spool.append_nowait([{"record_id": f"r{i}"}]) for i in range(50)]
    assert time.monotonic() - start < 1.0 and not futures[-1].done()
    assert spool.pending == 50  # written, counted, deliverable
    release.set()
    for f in futures:
        assert f.result(timeout=5) is None
    assert where and all(name.startswith("audit-fsync") for name in where)
    assert len(where) < 50 / 4, f"{len(where)} fsyncs for 50 appends"  # group commit

    def broken_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    failed = spool.append_nowait([{"record_id": "lost?"}])
    assert isinstance(failed.exception(timeout=5), OSError)
    monkeypatch.undo()
    assert spool.append_nowait([]).result(timeout=1) is None
    spool.close()  # fsyncs what is still unsynced
    lines = b"".join(p.read_bytes() for p in segments(spool_dir)).splitlines()
    assert sorted(json.loads(x)["record_id"] for x in lines) == sorted(
        [f"r{i}" for i in range(50)] + ["lost?"])


def test_second_spool_on_the_same_directory_is_refused(spool_dir: Path) -> None:
    first = AuditSpool(spool_dir, Sink())
    with pytest.raises(SpoolLockedError, match="already in use"):
        AuditSpool(spool_dir, Sink())
    first.close()
    AuditSpool(spool_dir, Sink()).close()  # free again once closed


def _on_disk(d: Path) -> str:
    return "".join(p.read_text() for p in segments(d))


def test_delivered_records_leave_the_disk_after_retire_after_s(spool_dir: Path) -> None:
    """Records carry raw ticket text: once delivered they must not wait on disk for the
    segment to fill (retention and erasure only reach PostgreSQL)."""
    sink = Sink()
    spool = AuditSpool(spool_dir, sink, flush_interval_s=0.01, retire_after_s=0.2)
    spool.start()
    spool.append(recs(0, 5, body="raw text Zebulon"))
    assert spool.flush(timeout_s=5)
    assert "Zebulon" in _on_disk(spool_dir)  # younger than retire_after_s: still there
    assert wait_until(lambda: "Zebulon" not in _on_disk(spool_dir), 5), _on_disk(spool_dir)
    spool.append(recs(5, 3))  # writing goes on in the next segment
    assert spool.flush(timeout_s=5)
    assert sink.ids == [f"r{i}" for i in range(8)] and spool.pending == 0
    spool.close()
    assert _on_disk(spool_dir) == ""  # a clean close leaves nothing delivered behind


def test_undelivered_records_stay_however_old(spool_dir: Path) -> None:
    sink = Sink(fail=True)
    spool = AuditSpool(spool_dir, sink, flush_interval_s=0.01, retire_after_s=0.05)
    spool.start()
    spool.append(recs(0, 4, body="raw text Zebulon"))
    time.sleep(0.3)
    assert spool.pending == 4 and "Zebulon" in _on_disk(spool_dir)
    spool.close()
    assert "Zebulon" in _on_disk(spool_dir)  # kept for the next start to deliver
    again = Sink()
    reopened = AuditSpool(spool_dir, again, flush_interval_s=0.01, retire_after_s=0.05)
    reopened.start()
    assert reopened.flush(timeout_s=5) and again.ids == [f"r{i}" for i in range(4)]
    reopened.close()
