"""Group concurrent requests into one cascade batch on one worker thread.

The cascade embeds, searches pgvector and runs the classifier once per batch, so many clients
each sending one ticket cost about as much as one request carrying all their tickets. There is
no fixed wait by default: when the worker is idle a request starts at once, and whatever
arrives while it is busy forms the next batch (up to ``max_size`` tickets). ``max_wait_s`` > 0
trades that latency for fuller batches.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar

In = TypeVar("In")
Out = TypeVar("Out")


class MicroBatcher(Generic[In, Out]):
    def __init__(self, handle: Callable[[list[In]], list[Out]], max_size: int,
                 max_wait_s: float) -> None:
        self.handle, self.max_size, self.max_wait_s = handle, max_size, max_wait_s
        self._queue: asyncio.Queue[tuple[Sequence[In], asyncio.Future[list[Out]]]] | None = None
        self._task: asyncio.Task[None] | None = None
        # One thread: the cascade's models are shared, and the batch is the parallelism.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cca-cascade")

    async def submit(self, items: Sequence[In]) -> list[Out]:
        """The outputs for ``items``, in order; a failure of the batch is raised to every caller."""
        if self._task is None or self._task.done():
            self._queue = asyncio.Queue()
            self._task = asyncio.get_running_loop().create_task(self._run())
        assert self._queue is not None
        future: asyncio.Future[list[Out]] = asyncio.get_running_loop().create_future()
        await self._queue.put((items, future))
        return await future

    async def _run(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            group = [await self._queue.get()]
            size = len(group[0][0])
            # What queued up while the last batch ran joins this one at once: an idle worker
            # never waits. Only a non-zero max_wait_s holds a partial batch back for more.
            deadline = loop.time() + self.max_wait_s
            while size < self.max_size:
                try:
                    nxt = self._queue.get_nowait()
                except asyncio.QueueEmpty:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    try:
                        nxt = await asyncio.wait_for(self._queue.get(), remaining)
                    except TimeoutError:
                        break
                if size + len(nxt[0]) > self.max_size:
                    await self._run_group(loop, group)
                    group, size = [nxt], len(nxt[0])
                    deadline = loop.time() + self.max_wait_s
                    continue
                group.append(nxt)
                size += len(nxt[0])
            await self._run_group(loop, group)

    async def _run_group(self, loop: asyncio.AbstractEventLoop,
                         group: list[tuple[Sequence[In], asyncio.Future[list[Out]]]]) -> None:
        flat = [item for items, _ in group for item in items]
        try:
            results = await loop.run_in_executor(self._executor, self.handle, flat)
        except Exception as exc:
            for _, fut in group:
                if not fut.done():
                    fut.set_exception(exc)
            return
        start = 0
        for items, fut in group:
            if not fut.done():
                fut.set_result(results[start:start + len(items)])
            start += len(items)

    def run_sync(self, items: Sequence[In]) -> list[Out]:
        """``handle`` on the cascade thread, from a thread that is not the event loop (the
        intake workers): their tickets take turns with the requests' batches."""
        return self._executor.submit(self.handle, list(items)).result()

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, RuntimeError):
                await self._task
        self._executor.shutdown(wait=False, cancel_futures=True)
