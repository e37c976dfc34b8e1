"""Channel names of the event bus, formatted in one place (publishers and subscribers agree)."""

from __future__ import annotations


class channels:  # noqa: N801 - a namespace of channel names
    ROBOT_STATUS_ALL = "robot-status:*"
    TASKS_ALL = "tasks:*"
    BREACHES = "breaches"
    ALERTS_ALL = "alerts:*"
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

    @staticmethod
    def breaches(fleet_id: str | None) -> list[str]:
        """Where a breach goes: the all-breaches channel and its fleet's."""
        return [channels.BREACHES, *([f"breaches:{fleet_id}"] if fleet_id else [])]

    @staticmethod
    def alerts(fleet_id: str | None) -> list[str]:
        """Where an alert change goes: the all-alerts channel and its fleet's."""
        return [channels.ALERTS_ALL, *([f"alerts:{fleet_id}"] if fleet_id else [])]

    @staticmethod
    def alerts_of(fleet_id: str | None) -> str:
        return f"alerts:{fleet_id}" if fleet_id else channels.ALERTS_ALL

    @staticmethod
    def breaches_of(fleet_id: str | None) -> str:
        return f"breaches:{fleet_id}" if fleet_id else channels.BREACHES

    @staticmethod
    def notifications(smith_id: str) -> str:
        return f"notifications:{smith_id}"
