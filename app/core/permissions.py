"""The 26 permissions and what each role holds: the one place roles are defined.

Which permission a field needs is declared next to the field in the SDL
(`@requires(permission: ...)`); `app/directives.py` enforces it.
"""

from __future__ import annotations

from enum import StrEnum


class Perm(StrEnum):
    FORGE_SEPULKA = "FORGE_SEPULKA"
    EDIT_SEPULKA = "EDIT_SEPULKA"
    DELETE_SEPULKA = "DELETE_SEPULKA"
    CAST_INGOT = "CAST_INGOT"
    TEMPER_INGOT = "TEMPER_INGOT"
    QUENCH_TO_FLEET = "QUENCH_TO_FLEET"
    RECALL_FLEET = "RECALL_FLEET"
    EMERGENCY_STOP = "EMERGENCY_STOP"
    VIEW_FLEET = "VIEW_FLEET"
    MANAGE_FLEET = "MANAGE_FLEET"
    VIEW_ROBOTS = "VIEW_ROBOTS"
    MANAGE_ROBOTS = "MANAGE_ROBOTS"
    CREATE_TASK = "CREATE_TASK"
    ASSIGN_TASK = "ASSIGN_TASK"
    CANCEL_TASK = "CANCEL_TASK"
    VIEW_TASKS = "VIEW_TASKS"
    VIEW_CATALOG = "VIEW_CATALOG"
    MANAGE_ALLOYS = "MANAGE_ALLOYS"
    MANAGE_PATTERNS = "MANAGE_PATTERNS"
    VIEW_EDICTS = "VIEW_EDICTS"
    MANAGE_EDICTS = "MANAGE_EDICTS"
    VIEW_BELLOWS = "VIEW_BELLOWS"
    EXPORT_TELEMETRY = "EXPORT_TELEMETRY"
    MANAGE_SMITHS = "MANAGE_SMITHS"
    SYSTEM_CONFIG = "SYSTEM_CONFIG"
    AUDIT_LOGS = "AUDIT_LOGS"


class Role(StrEnum):
    SMITH = "SMITH"
    OVER_SMITH = "OVER_SMITH"
    ADMIN = "ADMIN"


_SMITH = frozenset(
    {
        Perm.FORGE_SEPULKA,
        Perm.VIEW_CATALOG,
        Perm.VIEW_FLEET,
        Perm.VIEW_ROBOTS,
        Perm.VIEW_TASKS,
        Perm.CREATE_TASK,
    }
)
# An over-smith holds every smith permission too (the reference's comment says so, its code did not).
_OVER_SMITH = _SMITH | {
    Perm.MANAGE_FLEET,
    Perm.MANAGE_ROBOTS,
    Perm.ASSIGN_TASK,
    Perm.CANCEL_TASK,
    Perm.EMERGENCY_STOP,
    Perm.VIEW_BELLOWS,
}

ROLE_PERMISSIONS: dict[Role, frozenset[Perm]] = {
    Role.SMITH: _SMITH,
    Role.OVER_SMITH: frozenset(_OVER_SMITH),
    Role.ADMIN: frozenset(Perm),
}


def effective_permissions(role: str, granted: list[str] | None) -> frozenset[Perm]:
    """Role permissions plus the smith's individual grants (`smiths.permissions`)."""
    base = ROLE_PERMISSIONS.get(Role(role), frozenset())
    extra = {Perm(p) for p in granted or () if p in Perm.__members__}
    return base | extra
