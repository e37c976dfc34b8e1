"""The one way a worker component runs its loop: a task for the block's lifetime.

Rule: imports nothing of the project; every component module of app/workers/ uses it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, Protocol, TypeVar


class Runner(Protocol):
    def run(self) -> Coroutine[Any, Any, None]: ...


R = TypeVar("R", bound=Runner)


@contextlib.asynccontextmanager
async def running(
    name: str, runner: R, close: Callable[[], Awaitable[None]] | None = None
) -> AsyncIterator[R]:
    """Runs `runner.run()` as the task `name` while inside; on exit cancels it, waits for it,
    then awaits `close` (the runner's own connection, say)."""
    task = asyncio.create_task(runner.run(), name=name)
    try:
        yield runner
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if close is not None:
            await close()
