"""What the logs may carry: emails masked, never passwords, tokens or API keys."""

from __future__ import annotations


def mask_email(email: str) -> str:
    """`al***@example.com`: enough to tell accounts apart in a log, not to read the address."""
    local, at, domain = email.partition("@")
    if not at:
        return "***"
    return f"{local[:2]}***@{domain}"
