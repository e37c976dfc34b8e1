"""A worker component stops at shutdown even when something inside it swallows a cancellation
(Python 3.11's wait_for can, when the cancellation races a wake-up): it is cancelled again."""

from __future__ import annotations

import asyncio

from app.workers import running as running_module
from app.workers.running import running


class SwallowsOneCancellation:
    def __init__(self) -> None:
        self.swallowed = 0
        self.stopped = False

    async def run(self) -> None:
        try:
            while True:
                try:
                    await asyncio.sleep(3600)
                except asyncio.CancelledError:
                    if self.swallowed:
                        raise
                    self.swallowed += 1  # lost, as a racing wait_for would lose it
        finally:
            self.stopped = True


async def test_a_component_that_swallows_its_cancellation_is_cancelled_again(monkeypatch) -> None:
    monkeypatch.setattr(running_module, "CANCEL_GRACE_S", 0.1)
    component = SwallowsOneCancellation()
    closed: list[bool] = []

    async def close() -> None:
        closed.append(True)

    async with asyncio.timeout(5):
        async with running("swallower", component, close):
            await asyncio.sleep(0.05)
    assert component.swallowed == 1 and component.stopped and closed == [True]
