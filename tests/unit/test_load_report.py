"""The load benchmark's per-second view: one stall must show as a few bad seconds."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from load_client import Tally, worst_seconds


def test_a_stall_shows_as_its_seconds() -> None:
    tally = Tally()
    for i in range(1000):  # 10 s at 100 req/s, 10 ms each, except second 6: 600 ms
        due = 100.0 + i / 100
        tally.sent.append(due)
        tally.ms.append(600.0 if 6 <= i / 100 < 7 else 10.0)
    view = worst_seconds(tally, 100.0)
    assert view["seconds"] == 10
    assert view["seconds_p95_over"] == 1
    assert view["worst_second"] == 6 and view["worst_second_p95_ms"] == 600.0
    assert worst_seconds(Tally(), 0.0) == {}
