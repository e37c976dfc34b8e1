"""Outgoing mail: one `Mailer` interface, SMTP in production, files on disk in development."""

from __future__ import annotations

import asyncio
import logging
import time
from email.message import EmailMessage
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlsplit

import aiosmtplib

from app.logs import mask_email
from app.settings import Settings

log = logging.getLogger("sepulki.mail")


class Mailer(Protocol):
    async def send(self, to: str, subject: str, body: str) -> None: ...


def _message(sender: str, to: str, subject: str, body: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to
    message["Subject"] = subject
    message.set_content(body)
    return message


class SmtpMailer:
    """smtp://user:pass@host:587 upgrades with STARTTLS, smtps://host:465 speaks TLS from the
    start, smtp+plain://host:25 sends in the clear (a local relay or a test sink)."""

    def __init__(self, url: str, sender: str, timeout_s: float = 10.0) -> None:
        parts = urlsplit(url)
        if parts.scheme not in {"smtp", "smtps", "smtp+plain"} or not parts.hostname:
            raise ValueError("SEPULKI_SMTP_URL must look like smtp://user:pass@host:587")
        self._sender = sender
        self._options = {
            "hostname": parts.hostname,
            "port": parts.port or {"smtps": 465, "smtp": 587}.get(parts.scheme, 25),
            "username": unquote(parts.username) if parts.username else None,
            "password": unquote(parts.password) if parts.password else None,
            "use_tls": parts.scheme == "smtps",
            "start_tls": True if parts.scheme == "smtp" else False,
            "timeout": timeout_s,
        }

    async def send(self, to: str, subject: str, body: str) -> None:
        await aiosmtplib.send(_message(self._sender, to, subject, body), **self._options)
        log.info("mail %r sent to %s", subject, mask_email(to))


class FileMailer:
    """Development: each mail becomes a file in `directory`, since the log must never carry the
    links and tokens mails contain."""

    def __init__(self, directory: Path, sender: str) -> None:
        self._directory = directory
        self._sender = sender

    async def send(self, to: str, subject: str, body: str) -> None:
        path = self._directory / f"{time.time_ns()}.eml"
        data = bytes(_message(self._sender, to, subject, body))
        await asyncio.to_thread(self._write, path, data)
        log.info("mail %r to %s written to %s", subject, mask_email(to), path)


    def _write(self, path: Path, data: bytes) -> None:
        self._directory.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def create_mailer(settings: Settings) -> Mailer:
    if settings.smtp_url:
        return SmtpMailer(settings.smtp_url, settings.mail_from)
    return FileMailer(settings.data_dir / "mail", settings.mail_from)
