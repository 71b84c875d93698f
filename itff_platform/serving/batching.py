"""Adaptive batching for /predict: concurrent single-row requests to one model are scored as one matrix.

The batcher never waits on purpose. The first row for a model schedules a flush for the next turn of the
event loop; every row that reaches the batcher before that turn joins the same model call. At low load
each row is scored alone, with no added latency; under load the batch grows with the queue, up to
`max_batch_size`. (BentoML's `@bentoml.api(batchable=True)` would need /predict to take a list, and
its dispatcher answers 503 when its latency estimate runs over; this keeps the request shape and sheds
nothing.)"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

import anyio
import numpy as np

if TYPE_CHECKING:
    from itff_platform.contracts.champions import LoadedModel

Scored = tuple[np.ndarray, np.ndarray | None]


class RowBatcher:
    def __init__(self, max_batch_size: int, on_batch: Callable[[int], None] | None = None) -> None:
        self.max_batch_size = max_batch_size
        self.on_batch = on_batch  # observes each batch size (a metric)
        self._pending: dict[tuple[str, str], list[tuple[np.ndarray, asyncio.Future[Scored]]]] = {}

    async def predict(self, model: LoadedModel, x: np.ndarray) -> Scored:
        """model.predict(x) for one request. Models that read a window of rows (LSTM, Transformer) are scored
        on their own: their rows are one sequence, not independent requests."""
        if model.forecaster.context_rows or len(x) != 1:
            # A window of rows (and MC dropout) takes milliseconds: in a thread, so the event loop keeps serving.
            return await anyio.to_thread.run_sync(model.predict, x)
        key = (model.name, model.version)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Scored] = loop.create_future()
        queue = self._pending.setdefault(key, [])
        queue.append((x, future))
        if len(queue) >= self.max_batch_size:
            self._flush(key, model)
        elif len(queue) == 1:
            loop.call_soon(self._flush, key, model)
        return await future

    def _flush(self, key: tuple[str, str], model: LoadedModel) -> None:
        queue = self._pending.pop(key, [])
        if not queue:
            return
        if self.on_batch is not None:
            self.on_batch(len(queue))
        try:
            # In the event loop, not a thread: a stacked call costs ~0.1 ms, less than a thread hop.
            out, _ = model.predict(np.concatenate([x for x, _ in queue]))
        except Exception:
            # One request's rows must not fail the others batched with it: score each alone, so only its own
            # request gets the error and none hangs.
            for x, future in queue:
                try:
                    _settle(future, model.predict(x)[0])
                except Exception as error:
                    if not future.done():
                        future.set_exception(error)
            return
        for i, (_, future) in enumerate(queue):
            _settle(future, out[i : i + 1])


def _settle(future: asyncio.Future[Scored], out: np.ndarray) -> None:
    if not future.done():  # the client may have gone away
        future.set_result((out, None))
