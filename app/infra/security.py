"""Password hashing (argon2id, off the event loop), access tokens (JWT, algorithm pinned), and the
random secrets the service hands out (refresh tokens, invitation and reset links, robot API keys)."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Any

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from app.core.errors import Unauthenticated
from app.settings import Settings


def secret_digest(secret: str) -> str:
    """SHA-256 of a secret this service generated, hex: what is stored in its place.

    Passwords need a slow, salted hash (argon2) because people choose guessable ones. These
    secrets are 256 random bits: no dictionary or brute force finds one from its digest, so a slow
    hash would only cost CPU on every request that presents one."""
    return hashlib.sha256(secret.encode()).hexdigest()


def new_secret() -> tuple[str, str]:
    """A fresh 256-bit URL-safe secret and its digest."""
    secret = secrets.token_urlsafe(32)
    return secret, secret_digest(secret)


class Passwords:
    def __init__(self, settings: Settings) -> None:
        self._hasher = PasswordHasher(
            time_cost=settings.argon2_time_cost, memory_cost=settings.argon2_memory_kib
        )
        # Checked against when an account does not exist, so that costs as much as a wrong password.
        self.dummy_hash = self._hasher.hash(secrets.token_hex(16))
        # Verifications run so far: a login costs exactly one, whatever the email (see app.sessions).
        self.verifications = 0

    async def hash(self, password: str) -> str:
        return await asyncio.to_thread(self._hasher.hash, password)

    async def verify(self, password_hash: str, password: str) -> bool:
        self.verifications += 1

        def check() -> bool:
            try:
                return self._hasher.verify(password_hash, password)
            except (VerificationError, InvalidHashError):
                return False

        return await asyncio.to_thread(check)


@dataclass(frozen=True, slots=True)
class TokenClaims:
    smith_id: uuid.UUID
    session_id: str
    expires_at: int


class Tokens:
    def __init__(self, settings: Settings) -> None:
        self._secret = settings.jwt_secret
        self._algorithm = settings.jwt_algorithm
        self.ttl_s = settings.access_token_ttl_s

    def issue(self, smith: dict[str, Any], session_id: str) -> tuple[str, int]:
        now = int(time.time())
        exp = now + self.ttl_s
        claims = {
            "sub": str(smith["id"]),
            "email": smith["email"],
            "role": smith["role"],
            "sid": session_id,
            "sessionId": session_id,
            "iat": now,
            "exp": exp,
        }
        return jwt.encode(claims, self._secret, algorithm=self._algorithm), exp

    def verify(self, token: str) -> TokenClaims:
        """Claims of a valid token; `Unauthenticated` for anything expired, forged or malformed."""
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[self._algorithm],
                options={"require": ["exp", "iat", "sub", "sid"]},
            )
            # Both ids must be UUIDs: the session id goes straight into SQL as one.
            session_id = str(uuid.UUID(str(claims["sid"])))
            return TokenClaims(uuid.UUID(str(claims["sub"])), session_id, claims["exp"])
        except jwt.ExpiredSignatureError as exc:
            raise Unauthenticated("Token expired") from exc
        except (jwt.PyJWTError, ValueError, KeyError, TypeError) as exc:
            raise Unauthenticated("Invalid token") from exc
