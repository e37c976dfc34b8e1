"""Outgoing mail: one `Mailer` interface, SMTP in production, files on disk in development."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time
from email.message import EmailMessage
from pathlib import Path
from typing import Protocol, TypedDict
from urllib.parse import unquote, urlsplit

import aiosmtplib

from app.infra.logs import mask_email
from app.settings import Settings

log = logging.getLogger("sepulki.mail")


class MailError(Exception):
    """A mail could not be handed over; the message names the cause, never the mail's content."""


class Mailer(Protocol):
    async def send(self, to: str, subject: str, body: str) -> None:
        """Hands the mail over for delivery; raises `MailError` when that fails."""
        ...


def _message(sender: str, to: str, subject: str, body: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to
    message["Subject"] = subject
    # Plain ASCII stays as written, so that a link is one unbroken line in a .eml file too;
    # other text is quoted-printable, which every mail client decodes.
    plain = body.isascii() and all(len(line) <= 998 for line in body.splitlines())
    message.set_content(body, cte="7bit" if plain else "quoted-printable")
    return message


class _SmtpOptions(TypedDict):
    """The connection keywords `SmtpMailer` hands to `aiosmtplib.send`."""

    hostname: str
    port: int
    username: str | None
    password: str | None
    use_tls: bool
    start_tls: bool
    timeout: float


class SmtpMailer:
    """smtp://user:pass@host:587 upgrades with STARTTLS, smtps://host:465 speaks TLS from the
    start, smtp+plain://host:25 sends in the clear (a local relay or a test sink)."""

    def __init__(self, url: str, sender: str, timeout_s: float = 10.0) -> None:
        parts = urlsplit(url)
        if parts.scheme not in {"smtp", "smtps", "smtp+plain"} or not parts.hostname:
            raise ValueError("SEPULKI_SMTP_URL must look like smtp://user:pass@host:587")
        self._sender = sender
        self._options: _SmtpOptions = {
            "hostname": parts.hostname,
            "port": parts.port or {"smtps": 465, "smtp": 587}.get(parts.scheme, 25),
            "username": unquote(parts.username) if parts.username else None,
            "password": unquote(parts.password) if parts.password else None,
            "use_tls": parts.scheme == "smtps",
            "start_tls": True if parts.scheme == "smtp" else False,
            "timeout": timeout_s,
        }

    async def send(self, to: str, subject: str, body: str) -> None:
        try:
            await aiosmtplib.send(_message(self._sender, to, subject, body), **self._options)
        except (aiosmtplib.SMTPException, OSError) as exc:
            # The server's reply may quote the recipient: only the kind of failure is kept.
            log.warning("mail %r to %s failed: %s", subject, mask_email(to), type(exc).__name__)
            raise MailError(f"SMTP delivery failed ({type(exc).__name__})") from None
        log.info("mail %r sent to %s", subject, mask_email(to))


class FileMailer:
    """Development: each mail becomes a file in `directory`, since the log must never carry the
    links and tokens mails contain."""

    def __init__(self, directory: Path, sender: str) -> None:
        self._directory = directory
        self._sender = sender

    async def send(self, to: str, subject: str, body: str) -> None:
        path = self._directory / f"{time.time_ns()}-{secrets.token_hex(4)}.eml"
        data = bytes(_message(self._sender, to, subject, body))
        try:
            await asyncio.to_thread(self._write, path, data)
        except OSError as exc:
            raise MailError(f"writing the mail failed ({type(exc).__name__})") from None
        log.info("mail %r to %s written to %s", subject, mask_email(to), path)

    def _write(self, path: Path, data: bytes) -> None:
        # Mails carry sign-up and reset links: readable by the service's user only.
        self._directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as file:
            file.write(data)


def create_mailer(settings: Settings) -> Mailer:
    if settings.smtp_url:
        return SmtpMailer(settings.smtp_url, settings.mail_from)
    return FileMailer(settings.data_dir / "mail", settings.mail_from)
