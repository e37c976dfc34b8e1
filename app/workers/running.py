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
# How long a cancelled component has to stop before it is cancelled again.
CANCEL_GRACE_S = 5.0


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
        # Cancelled again while it keeps running: library code that swallows one cancellation
        # (Python 3.11's wait_for, racing a wake-up) must not hold the process's shutdown for ever.
        # (asyncio.wait neither raises at its timeout nor hides a cancellation of this block.)
        while not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=CANCEL_GRACE_S)
        with contextlib.suppress(asyncio.CancelledError):
            await task  # done: re-raises what the component failed with, if anything else
        if close is not None:
            await close()
