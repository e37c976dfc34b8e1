"""Mail leaves through SMTP (checked against a real SMTP server on loopback) or, in development,
lands as files; neither way writes a mail's links or tokens to the log."""

from __future__ import annotations

import email
import email.policy
import logging
import secrets
import stat
from email.message import EmailMessage
from pathlib import Path

import pytest

from app.infra.mail import FileMailer, MailError, SmtpMailer, create_mailer
from app.settings import Settings
from tests.mailsink import SmtpSink, our_log
from tests.servers import free_port

SENDER = "Sepulki Hammer <no-reply@sepulki.local>"


async def test_a_mail_sent_over_smtp_arrives_with_its_subject_and_body(
    smtp_sink: SmtpSink, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    token = secrets.token_urlsafe(32)
    mailer = SmtpMailer(smtp_sink.url, SENDER)

    await mailer.send(
        "ada.lovelace@example.com", "Reset your password", f"Your link: https://x/r?token={token}\n"
    )

    message = await smtp_sink.wait_for("ada.lovelace@example.com")
    assert message["Subject"] == "Reset your password"
    assert message["From"] == SENDER
    assert token in message.get_content()
    assert token not in our_log(caplog)
    assert "ada.lovelace@example.com" not in our_log(caplog)
    assert "ad***@example.com" in our_log(caplog)


async def test_an_unreachable_mail_server_is_a_mail_error_without_the_mail_in_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    token = secrets.token_urlsafe(32)
    mailer = SmtpMailer(f"smtp+plain://127.0.0.1:{free_port()}", SENDER, timeout_s=2)

    with pytest.raises(MailError):
        await mailer.send("grace@example.com", "Invitation", f"token={token}")

    assert token not in our_log(caplog)
    assert "grace@example.com" not in our_log(caplog)


async def test_non_ascii_text_arrives_intact(smtp_sink: SmtpSink) -> None:
    body = "José Müller invited you.\n\nhttps://fleet.example/register?invite=" + "x" * 43 + "\n"
    await SmtpMailer(smtp_sink.url, SENDER).send("jose@example.com", "Einladung für José", body)
    message = await smtp_sink.wait_for("jose@example.com")
    assert message["Subject"] == "Einladung für José"
    assert message.get_content().replace("\r\n", "\n") == body


def test_smtp_urls_choose_tls_the_port_and_credentials() -> None:
    assert SmtpMailer("smtp://user:p%40ss@mail.example.com", SENDER)._options == {
        "hostname": "mail.example.com",
        "port": 587,
        "username": "user",
        "password": "p@ss",
        "use_tls": False,
        "start_tls": True,
        "timeout": 10.0,
    }
    assert SmtpMailer("smtps://mail.example.com", SENDER)._options["port"] == 465
    assert SmtpMailer("smtps://mail.example.com", SENDER)._options["use_tls"] is True
    assert SmtpMailer("smtp+plain://relay:2525", SENDER)._options["start_tls"] is False
    with pytest.raises(ValueError, match="SEPULKI_SMTP_URL"):
        SmtpMailer("http://mail.example.com", SENDER)


async def test_in_development_a_mail_is_a_private_file_and_only_its_path_is_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    token = secrets.token_urlsafe(32)
    mailer = create_mailer(Settings(data_dir=tmp_path))
    assert isinstance(mailer, FileMailer)

    await mailer.send("ada@example.com", "Your invitation", f"https://x/register?invite={token}\n")
    await mailer.send("ada@example.com", "Your invitation", "a second one\n")

    files = sorted((tmp_path / "mail").glob("*.eml"))
    assert len(files) == 2
    message = email.message_from_bytes(files[0].read_bytes(), policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    assert message["To"] == "ada@example.com"
    assert message["Subject"] == "Your invitation"
    assert token in message.get_content()
    assert stat.S_IMODE(files[0].stat().st_mode) == 0o600
    # The link is one unbroken line of the file, for whoever opens it in an editor.
    assert f"/register?invite={token}\n".encode() in files[0].read_bytes()
    assert token not in caplog.text
    assert "ad***@example.com" in caplog.text


def test_with_an_smtp_url_mail_goes_over_smtp(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, smtp_url="smtp+plain://127.0.0.1:2525")
    assert isinstance(create_mailer(settings), SmtpMailer)
