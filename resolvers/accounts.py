"""Sign-up, password reset and change, profiles, and admin controls over smiths."""

from __future__ import annotations

from ariadne import SchemaBindable

bindables: list[SchemaBindable] = []
