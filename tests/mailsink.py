"""A real SMTP server for the mail tests, and what our own loggers wrote."""

from __future__ import annotations

import asyncio
import email
import email.policy
import threading
import time
from email.message import EmailMessage
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from tests.servers import free_port


class SmtpSink:
    """A real SMTP server (aiosmtpd, in its own thread) that keeps every message it accepts."""

    def __init__(self) -> None:
        self.port = free_port()
        self.messages: list[EmailMessage] = []
        self._lock = threading.Lock()
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port)

    @property
    def url(self) -> str:
        return f"smtp+plain://127.0.0.1:{self.port}"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        with self._lock:
            self.messages.append(message)
        return "250 Message accepted for delivery"

    def start(self) -> None:
        self._controller.start()

    def stop(self) -> None:
        self._controller.stop()

    def to(self, address: str) -> list[EmailMessage]:
        with self._lock:
            return [m for m in self.messages if address.lower() in str(m["To"]).lower()]

    async def wait_for(self, address: str, count: int = 1, within: float = 10.0) -> EmailMessage:
        """The `count`th message to `address`, waiting up to `within` seconds for it to arrive."""
        deadline = time.monotonic() + within
        while len(found := self.to(address)) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(found)} of {count} mails to {address} within {within} s")
            await asyncio.sleep(0.02)
        return found[count - 1]


def our_log(caplog: pytest.LogCaptureFixture) -> str:
    """What this service logged (the SMTP server under test logs the sessions it receives)."""
    return "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith("mail."))
