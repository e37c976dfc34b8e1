"""Per-request DataLoaders: one per batch function, created on first use.

A batch function lives beside its SQL in the domain module, is named `<result>_by_<key>`,
takes the pool and the keys, runs one `= ANY($1)` query and returns results in key order.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable, Sequence
from functools import partial
from typing import Any

from aiodataloader import DataLoader

from app.db import Pool

BatchFn = Callable[[Pool, list[Any]], Awaitable[Sequence[Any]]]


class Loaders:
    __slots__ = ("_loaders", "_pool")

    def __init__(self, pool: Pool) -> None:
        self._pool = pool
        self._loaders: dict[BatchFn, DataLoader] = {}

    def __call__(self, batch_fn: BatchFn) -> DataLoader:
        loader = self._loaders.get(batch_fn)
        if loader is None:
            loader = DataLoader(partial(batch_fn, self._pool))
            self._loaders[batch_fn] = loader
        return loader

    async def load(self, batch_fn: BatchFn, key: Hashable) -> Any:
        return await self(batch_fn).load(key)

    def prime(self, batch_fn: BatchFn, key: Hashable, value: Any) -> None:
        self(batch_fn).prime(key, value)
