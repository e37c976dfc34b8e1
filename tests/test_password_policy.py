"""A smith choosing a password is told clearly when it is too short, too long or too easy to guess."""

from __future__ import annotations

import asyncio
import sys

import pytest

from app.core import password_policy
from app.core.errors import Invalid

ADA = ("ada.lovelace@example.com", "Ada Lovelace")
STRONG = "quench-orbit-lantern-71-marrow"


async def refusal(password: str, user_inputs: tuple[str, ...] = ADA, field: str = "password") -> str | None:
    try:
        await password_policy.check(password, field=field, user_inputs=user_inputs)
    except Invalid as exc:
        assert exc.field == field
        assert exc.code == "BAD_USER_INPUT"
        return exc.message
    return None


async def test_a_long_unpredictable_passphrase_is_accepted() -> None:
    assert await refusal(STRONG) is None
    assert await refusal("Vx8#qLm2!tRz9@wK") is None


async def test_a_short_password_is_refused_however_random() -> None:
    assert await refusal("Xq7#vL2!pR9") == "Password must be at least 12 characters long"


async def test_a_password_past_the_ceiling_is_refused_before_any_estimate() -> None:
    message = await refusal("a" * (password_policy.MAX_LENGTH + 1), field="new")
    assert message == f"Password must be at most {password_policy.MAX_LENGTH} characters long"
    assert await refusal(STRONG + "x" * (password_policy.MAX_LENGTH - len(STRONG))) is None


@pytest.mark.parametrize(
    "password",
    ["passwordpassword", "123456789012", "qwertyuiopasdf", "aaaaaaaaaaaaaaaa", "sepulkihammer1"],
)
async def test_common_and_repetitive_passwords_are_refused_with_a_hint(password: str) -> None:
    message = await refusal(password)
    assert message is not None
    assert message.startswith("Password is too easy to guess: ")
    assert len(message) > len("Password is too easy to guess: ")


async def test_a_password_made_of_the_smiths_own_email_or_name_is_refused() -> None:
    message = await refusal("adalovelace1815", field="newPassword")
    assert message is not None
    assert "Avoid your name, your email" in message
    assert await refusal("adalovelace1815", user_inputs=("ada.lovelace@example.com",)) is not None
    # The same password is fine for someone else.
    assert await refusal("adalovelace1815", user_inputs=("grace@example.com", "Grace Hopper")) is None


async def test_estimates_running_at_once_each_use_their_own_smiths_details() -> None:
    """zxcvbn keeps the user inputs in a global: concurrent checks must not see each other's."""
    password = "zebulonquartermaine!"
    own = ("zq@example.com", "Zebulon Quartermaine")
    other = ("grace@example.com", "Grace Hopper")
    # Threads switch often enough here for an unguarded global to be overwritten mid-estimate.
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        results = await asyncio.gather(
            *(refusal(password, user_inputs=own if i % 2 else other) for i in range(40))
        )
    finally:
        sys.setswitchinterval(interval)
    assert all(r is not None for r in results[1::2])
    assert all(r is None for r in results[0::2])
