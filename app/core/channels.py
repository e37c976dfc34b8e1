"""Channel names of the event bus, formatted in one place (publishers and subscribers agree)."""

from __future__ import annotations


class channels:  # noqa: N801 - a namespace of channel names
    ROBOT_STATUS_ALL = "robot-status:*"
    TASKS_ALL = "tasks:*"
    BREACHES = "breaches"
    COMMANDS_ALL = "commands:*"
    # Revoked sessions ({"sessionIds": [...]}): every API replica closes their websockets.
    SESSIONS_REVOKED = "sessions:revoked"

    @staticmethod
    def robot_status(robot_id: str) -> str:
        return f"robot-status:{robot_id}"

    @staticmethod
    def robot(robot_id: str) -> list[str]:
        """Where a robot's status change goes: its own channel and the all-robots one."""
        return [channels.robot_status(robot_id), channels.ROBOT_STATUS_ALL]

    @staticmethod
    def tasks(fleet_id: str) -> str:
        return f"tasks:{fleet_id}"

    @staticmethod
    def task(*fleet_ids: str | None) -> list[str]:
        """Where a task change goes: the channel of each fleet it concerns and the all-tasks one."""
        return [*(channels.tasks(f) for f in dict.fromkeys(fleet_ids) if f is not None), channels.TASKS_ALL]

    @staticmethod
    def bellows(fleet_id: str) -> str:
        return f"bellows:{fleet_id}"

    @staticmethod
    def commands(robot_id: str) -> str:
        return f"commands:{robot_id}"
