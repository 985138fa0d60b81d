"""Concurrent requests share one cascade batch; answers go back to the right caller."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from serving.batcher import MicroBatcher


def test_concurrent_requests_are_grouped_and_answered_in_order():
    batches: list[list[int]] = []

    def handle(items: list[int]) -> list[int]:
        batches.append(list(items))
        time.sleep(0.02)  # the cascade is busy: later requests queue up
        return [i * 10 for i in items]

    async def main() -> list[list[int]]:
        b = MicroBatcher(handle, max_size=8, max_wait_s=0.001)
        try:
            return await asyncio.gather(*(b.submit([i]) for i in range(20)))
        finally:
            await b.aclose()

    results = asyncio.run(main())
    assert results == [[i * 10] for i in range(20)]
    assert max(len(x) for x in batches) > 1, batches  # grouping happened
    assert all(len(x) <= 8 for x in batches)
    assert sorted(i for x in batches for i in x) == list(range(20))


def test_a_multi_ticket_request_stays_together_and_over_size_starts_a_new_batch():
    batches: list[list[str]] = []

    def handle(items: list[str]) -> list[str]:
        batches.append(list(items))
        return [s.upper() for s in items]

    async def main():
        b = MicroBatcher(handle, max_size=4, max_wait_s=0.01)
        try:
            return await asyncio.gather(b.submit(["a", "b", "c"]), b.submit(["d", "e"]))
        finally:
            await b.aclose()

    first, second = asyncio.run(main())
    assert first == ["A", "B", "C"] and second == ["D", "E"]
    assert ["a", "b", "c"] in batches and ["d", "e"] in batches


def test_a_failing_batch_raises_to_each_of_its_callers_and_the_next_batch_works():
    calls = {"n": 0}

    def handle(items: list[int]) -> list[int]:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("cascade failed")
        return items

    async def main():
        b = MicroBatcher(handle, max_size=4, max_wait_s=0)
        try:
            with pytest.raises(RuntimeError, match="cascade failed"):
                await b.submit([1])
            return await b.submit([2])
        finally:
            await b.aclose()

    assert asyncio.run(main()) == [2]


def test_work_runs_on_one_thread_off_the_event_loop():
    seen: set[str] = set()

    def handle(items: list[int]) -> list[int]:
        seen.add(threading.current_thread().name)
        return items

    async def main():
        b = MicroBatcher(handle, max_size=2, max_wait_s=0)
        try:
            for i in range(5):
                await b.submit([i])
        finally:
            await b.aclose()

    asyncio.run(main())
    assert len(seen) == 1 and next(iter(seen)).startswith("cca-cascade")


def test_without_a_wait_an_idle_worker_starts_at_once_and_a_busy_one_groups_what_queues():
    batches: list[list[int]] = []
    started = threading.Event()

    def handle(items: list[int]) -> list[int]:
        batches.append(list(items))
        started.set()
        time.sleep(0.05)
        return items

    async def main() -> float:
        b = MicroBatcher(handle, max_size=64, max_wait_s=0)
        try:
            t0 = time.perf_counter()
            first = asyncio.ensure_future(b.submit([0]))
            await asyncio.to_thread(started.wait, 1)
            waited = time.perf_counter() - t0
            # These arrive while the first batch runs: they must form one batch, not ten.
            await asyncio.gather(first, *(b.submit([i]) for i in range(1, 11)))
            return waited
        finally:
            await b.aclose()

    waited = asyncio.run(main())
    assert waited < 0.04  # no fixed wait before an idle worker starts
    assert batches == [[0], list(range(1, 11))]
