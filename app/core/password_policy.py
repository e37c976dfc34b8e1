"""The password policy of accounts: a length floor and ceiling and a zxcvbn strength estimate.

Applied wherever a smith chooses a password (register, confirmPasswordReset, changePassword);
the development seed's well-known passwords never pass through it.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Iterable

from zxcvbn import zxcvbn

from app.core.errors import Invalid

MIN_LENGTH = 12
# Every sign-in hashes what it is sent with argon2id: a ceiling bounds that work, and no
# password manager generates more than this.
MAX_LENGTH = 128
# zxcvbn: 3 = "safely unguessable: moderate protection from offline slow-hash scenario".
MIN_SCORE = 3
# zxcvbn's matching grows faster than linearly with length (about 0.04 s at 72 characters, 0.15 s
# at 128, 1.5 s at 256 here), so only the first 72 characters are estimated. A password whose
# first 72 characters are strong is strong; one whose start is weak is refused, which errs safe.
ESTIMATED_CHARS = 72
# Words an attacker tries first against this service, besides the smith's own email and name.
SERVICE_WORDS = ("sepulki", "hammer", "sepulkihammer", "smith", "forge")

# zxcvbn keeps the user inputs of the call in a module-level dictionary: two estimates running
# at once in threads would read each other's inputs.
_zxcvbn_lock = threading.Lock()


def _user_inputs(values: Iterable[str | None]) -> list[str]:
    # zxcvbn ranks user inputs by position: the smith's own details first, as guessed first.
    words: list[str] = []
    for value in values:
        local, at, _ = (value or "").partition("@")
        for text in (value, local if at else None):
            if text:
                # Whole, run together and in parts: "Ada Lovelace" yields "adalovelace", "lovelace".
                parts = [part for part in re.split(r"[\W_]+", text) if part]
                words.extend([text, "".join(parts), *(part for part in parts if len(part) >= 3)])
    return [*words, *SERVICE_WORDS]


def _estimate(password: str, user_inputs: list[str]) -> tuple[int, str]:
    with _zxcvbn_lock:
        result = zxcvbn(password[:ESTIMATED_CHARS], user_inputs=user_inputs)
    feedback = result.get("feedback") or {}
    hints = [feedback.get("warning") or "", *(feedback.get("suggestions") or [])]
    if any(match.get("dictionary_name") == "user_inputs" for match in result.get("sequence") or []):
        hints.append("Avoid your name, your email and the name of this service.")
    return int(result["score"]), " ".join(h.strip() for h in hints if h and h.strip())


async def check(password: str, *, field: str, user_inputs: Iterable[str | None] = ()) -> None:
    """Raises `Invalid` (BAD_USER_INPUT on `field`) with a message saying what to change.

    `user_inputs` are the account's email and name: a password built from them is weak whatever
    its length. The estimate runs in a thread, since it takes tens of milliseconds of CPU."""
    if len(password) < MIN_LENGTH:
        raise Invalid(f"Password must be at least {MIN_LENGTH} characters long", field=field)
    if len(password) > MAX_LENGTH:
        raise Invalid(f"Password must be at most {MAX_LENGTH} characters long", field=field)
    score, hints = await asyncio.to_thread(_estimate, password, _user_inputs(user_inputs))
    if score < MIN_SCORE:
        message = "Password is too easy to guess"
        message += f": {hints}" if hints else ": add another word or two."
        raise Invalid(message, field=field)
