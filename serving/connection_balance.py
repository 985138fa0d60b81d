"""Even out the workers' shares of keep-alive connections.

BentoML's workers share one listening socket, and which one accepts a new connection is a
race, not a choice: a client's whole connection pool can land on one worker, which then does
all the work while the other idles, and the tail latency rises with it (the measurement is in
``docs/ARCHITECTURE.md``, "Serving"). Two remedies, both by answering with
``Connection: close`` so the client reconnects and the accept race is run again:

- any keep-alive connection closes after ``max_requests`` (nginx's keepalive_requests), and
  a ``/batch_classify`` answer always closes its connection (a batch takes far longer than a
  reconnect);
- a worker with clearly more requests in flight than the others closes a connection after
  answering on it. Workers publish their in-flight counts in a small shared file (one slot
  each), so the busy worker sheds within milliseconds instead of after ``max_requests``.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import struct
from pathlib import Path
from typing import Any

from serving import worker_index

log = logging.getLogger("cca.serving.http")
SLOTS = 64
_SLOT = struct.Struct("q")


def overloaded(mine: int, others: list[int], min_in_flight: int = 4) -> bool:
    """True when this worker is clearly busier than the others (``mine`` counts the request
    being answered): at least ``min_in_flight`` and 1.5x the others' mean plus 2, so two
    workers with 10 connections each never shed, 14 and 6 do."""
    if not others or mine < min_in_flight:
        return False
    return mine >= 2 + 1.5 * sum(others) / len(others)


class LoadBoard:
    """In-flight request counts of a service's workers, in one shared memory-mapped file."""

    def __init__(self, path: Path, worker: int, workers: int) -> None:
        if not 1 <= worker <= min(workers, SLOTS):
            raise ValueError(f"worker {worker} is not in 1..{min(workers, SLOTS)}")
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size < SLOTS * _SLOT.size:
                os.ftruncate(fd, SLOTS * _SLOT.size)
            self._map = mmap.mmap(fd, SLOTS * _SLOT.size)
        finally:
            os.close(fd)
        self.worker, self.workers, self.in_flight = worker, workers, 0
        self._publish()

    def _publish(self) -> None:
        _SLOT.pack_into(self._map, (self.worker - 1) * _SLOT.size, self.in_flight)

    def enter(self) -> None:
        self.in_flight += 1
        self._publish()

    def leave(self) -> None:
        self.in_flight = max(0, self.in_flight - 1)
        self._publish()

    def others(self) -> list[int]:
        return [max(0, _SLOT.unpack_from(self._map, i * _SLOT.size)[0])
                for i in range(self.workers) if i != self.worker - 1]

    def close(self) -> None:
        self._map.close()


def remove_stale_boards(directory: Path) -> list[Path]:
    """Delete the boards of services whose starting process is gone (one file per start)."""
    removed = []
    for path in directory.glob("load-*.bin"):
        pid = path.stem.removeprefix("load-")
        if pid.isdigit() and not _alive(int(pid)):
            with contextlib.suppress(OSError):
                path.unlink()
                removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


class ConnectionBalancer:
    """Decides, per response, whether to close its connection (see the module docstring).

    The board is opened on first use, in the worker, because only then is the worker's index
    known; without one (a single worker, or the app run in-process) only ``max_requests`` and
    the batch rule apply.
    """

    def __init__(self, max_requests: int, board_dir: Path | None = None, workers: int = 1,
                 min_served: int = 3) -> None:
        self.max_requests, self.min_served = max_requests, min_served
        self._board_dir, self._workers = board_dir, workers
        self._board: LoadBoard | bool | None = None  # False: tried, none
        self._served: dict[tuple[Any, ...], int] = {}

    def board(self) -> LoadBoard | None:
        if self._board is None:
            self._board = False
            if self._board_dir is not None and self._workers > 1 and self.max_requests:
                index = worker_index()
                if index is not None and 1 <= index <= min(self._workers, SLOTS):
                    # Named after the process that started the workers: a new `cca serve`
                    # starts from a clean board.
                    path = self._board_dir / f"load-{os.getppid()}.bin"
                    try:
                        self._board = LoadBoard(path, index, self._workers)
                    except OSError as exc:  # balancing is an optimisation: serve without it
                        log.warning("connection balancing off: cannot open %s (%s)", path, exc)
                        return None
                    remove_stale_boards(self._board_dir)
        return self._board or None

    def enter(self) -> None:
        if board := self.board():
            board.enter()

    def leave(self) -> None:
        if board := self.board():
            board.leave()

    def close_after(self, scope: dict[str, Any]) -> bool:
        """True when this response should close its connection."""
        client = scope.get("client")
        if not self.max_requests or not client:
            return False
        key = tuple(client)
        if scope.get("path") == "/batch_classify":
            self._served.pop(key, None)
            return True
        n = self._served.get(key, 0) + 1
        board = self.board()
        if n >= self.max_requests or (n >= self.min_served and board is not None
                                      and overloaded(board.in_flight, board.others())):
            self._served.pop(key, None)
            return True
        if len(self._served) > 10_000:  # connections the clients closed first
            self._served.clear()
        self._served[key] = n
        return False
