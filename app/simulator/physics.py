"""The simulated robot's body: battery, status, motion on the floor, temperatures, health, metrics.

Pure functions over a `RobotState` and a `random.Random`, so the physics is testable without a
broker. Battery and status run on a sped-up simulated clock (`time_scale`), motion in real seconds:
a robot crosses the floor at walking speed while its battery visibly drains and recharges.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

FLOOR_WIDTH_M = 40.0
FLOOR_HEIGHT_M = 25.0
# Robots keep this far from the walls.
FLOOR_MARGIN_M = 0.5

LOW_BATTERY = 15.0  # below: go charging
FULL_BATTERY = 95.0  # at or above while charging: back to work
BATTERY_WARNING = 20.0  # crossing it downwards raises a BATTERY_LOW event

IDLE_DRAIN_PER_H = 0.5
CHARGE_PER_H = 50.0
MOTOR_TEMP_BASE = 45.0
MOTOR_TEMP_MOVING = 10.0
# Seconds for the motor temperature to cover ~63 % of the way to its target.
MOTOR_TEMP_TAU_S = 20.0
OVERHEAT_C = 65.0

# Statuses in which the robot stays put until an operator acts (a command).
HALTED = frozenset({"MAINTENANCE", "ERROR"})


@dataclass(slots=True)
class RobotState:
    """One robot as the simulator sees it; mutated in place by `advance`."""

    robot_id: str
    status: str = "IDLE"
    battery: float = 80.0
    x: float = FLOOR_WIDTH_M / 2
    y: float = FLOOR_HEIGHT_M / 2
    heading: float = 0.0  # radians, counter-clockwise from +x
    speed: float = 0.0  # m/s
    cruise_speed: float = 1.0  # m/s while driving to a waypoint
    work_drain_per_h: float = 2.5  # 2-3 %/h, per robot
    motor_temp: float = MOTOR_TEMP_BASE
    # Degrees added to the motor's target temperature during a strain spell, and its end (sim s).
    strain: float = 0.0
    strain_left_s: float = 0.0
    error_count: int = 0
    waypoint: tuple[float, float] | None = None
    dwell_left_s: float = 0.0  # seconds left standing at a waypoint (picking, placing)
    task_id: str | None = None
    ingot_version: str | None = None  # the build UPDATE_INGOT last installed
    firmware_version: str | None = None  # what UPDATE_FIRMWARE last installed
    calibration: dict[str, Any] | None = None  # what CALIBRATE last applied


def clamp(value: float, low: float, high: float) -> float:
    return max(low, min(high, value))


def health_score(battery: float, motor_temp: float, error_count: int) -> float:
    """100 minus penalties for a battery below 20 %, a motor above 60 °C and each active error."""
    score = 100.0
    if battery < 20:
        score -= 20 - battery
    if motor_temp > 60:
        score -= 2 * (motor_temp - 60)
    score -= 5 * error_count
    return clamp(score, 0.0, 100.0)


def battery_rate_per_h(status: str, speed: float, work_drain_per_h: float = 2.5) -> float:
    """Percent per simulated hour: negative while draining, positive while charging."""
    if status == "CHARGING":
        return CHARGE_PER_H
    if status == "WORKING":
        return -(work_drain_per_h + 0.5 * speed)
    if status == "OFFLINE":
        return 0.0
    return -IDLE_DRAIN_PER_H


def next_status(status: str, battery: float) -> str:
    """Battery-driven transitions; every other change comes from a command."""
    if status in ("IDLE", "WORKING") and battery < LOW_BATTERY:
        return "CHARGING"
    if status == "CHARGING" and battery >= FULL_BATTERY:
        return "WORKING"
    return status


def inside_floor(x: float, y: float) -> tuple[float, float]:
    return (
        clamp(x, FLOOR_MARGIN_M, FLOOR_WIDTH_M - FLOOR_MARGIN_M),
        clamp(y, FLOOR_MARGIN_M, FLOOR_HEIGHT_M - FLOOR_MARGIN_M),
    )


def random_waypoint(rng: random.Random) -> tuple[float, float]:
    return (
        rng.uniform(FLOOR_MARGIN_M, FLOOR_WIDTH_M - FLOOR_MARGIN_M),
        rng.uniform(FLOOR_MARGIN_M, FLOOR_HEIGHT_M - FLOOR_MARGIN_M),
    )


def move(state: RobotState, dt_s: float, rng: random.Random) -> None:
    """A WORKING robot drives to a waypoint, dwells there a few seconds, then picks the next one."""
    if state.status != "WORKING":
        state.speed = 0.0
        state.waypoint = None
        return
    if state.dwell_left_s > 0:
        state.dwell_left_s = max(0.0, state.dwell_left_s - dt_s)
        state.speed = 0.0
        return
    if state.waypoint is None:
        state.waypoint = random_waypoint(rng)
    tx, ty = state.waypoint
    dx, dy = tx - state.x, ty - state.y
    distance = math.hypot(dx, dy)
    step = state.cruise_speed * dt_s
    if distance <= step:
        state.x, state.y = inside_floor(tx, ty)
        state.waypoint = None
        state.dwell_left_s = rng.uniform(2.0, 6.0)
        state.speed = distance / dt_s if dt_s > 0 else 0.0
    else:
        state.heading = math.atan2(dy, dx)
        state.x, state.y = inside_floor(state.x + dx / distance * step, state.y + dy / distance * step)
        state.speed = state.cruise_speed * rng.uniform(0.95, 1.05)


def heat(state: RobotState, dt_s: float, rng: random.Random) -> bool:
    """First-order approach of the motor to its target temperature; True when a strain spell begins
    (a heavy load makes the motor run hot for a while)."""
    started = False
    if state.strain_left_s > 0:
        state.strain_left_s = max(0.0, state.strain_left_s - dt_s)
        if state.strain_left_s == 0:
            state.strain = 0.0
    elif state.speed > 0 and rng.random() < dt_s / 600:  # about once per 10 minutes of driving
        state.strain = rng.uniform(15.0, 30.0)
        state.strain_left_s = rng.uniform(20.0, 60.0)
        started = True
    target = MOTOR_TEMP_BASE + (MOTOR_TEMP_MOVING if state.speed > 0 else 0.0) + state.strain
    state.motor_temp += (target - state.motor_temp) * (1 - math.exp(-dt_s / MOTOR_TEMP_TAU_S))
    return started


@dataclass(frozen=True, slots=True)
class Change:
    """What `advance` observed, for the MQTT side to report."""

    status_changed: bool
    events: list[tuple[str, str, str, dict[str, Any]]]  # (type, severity, message, data)


def advance(state: RobotState, dt_s: float, time_scale: float, rng: random.Random) -> Change:
    """Moves the robot `dt_s` real seconds forward; battery and status on the simulated clock."""
    events: list[tuple[str, str, str, dict[str, Any]]] = []
    move(state, dt_s, rng)
    was_hot = state.motor_temp > OVERHEAT_C
    heat(state, dt_s, rng)
    if state.motor_temp > OVERHEAT_C and not was_hot:
        events.append(
            (
                "MOTOR_OVERHEAT",
                "WARNING",
                f"Motor temperature {state.motor_temp:.1f} °C",
                {"motorTemperature": round(state.motor_temp, 1)},
            )
        )
    before = state.battery
    rate = battery_rate_per_h(state.status, state.speed, state.work_drain_per_h)
    state.battery = clamp(state.battery + rate * dt_s * time_scale / 3600, 0.0, 100.0)
    if before >= BATTERY_WARNING > state.battery:
        events.append(
            (
                "BATTERY_LOW",
                "WARNING",
                f"Battery below {BATTERY_WARNING:.0f}%",
                {"batteryLevel": round(state.battery, 2)},
            )
        )
    status = next_status(state.status, state.battery)
    changed = status != state.status
    if changed:
        if status == "CHARGING":
            events.append(
                ("CHARGING_STARTED", "INFO", "Heading to charger", {"batteryLevel": round(state.battery, 2)})
            )
        elif state.status == "CHARGING":
            events.append(
                (
                    "CHARGING_COMPLETE",
                    "INFO",
                    "Charged, back to work",
                    {"batteryLevel": round(state.battery, 2)},
                )
            )
        state.status = status
        if status != "WORKING":
            state.speed = 0.0
            state.waypoint = None
    return Change(changed, events)


def orientation(heading: float) -> dict[str, float]:
    """A yaw-only quaternion."""
    return {"x": 0.0, "y": 0.0, "z": round(math.sin(heading / 2), 4), "w": round(math.cos(heading / 2), 4)}


def pose(state: RobotState) -> dict[str, Any]:
    return {
        "position": {"x": round(state.x, 3), "y": round(state.y, 3), "z": 0.0},
        "orientation": orientation(state.heading),
    }


def metrics(state: RobotState, rng: random.Random) -> dict[str, float]:
    """The metric names of the bellows contract, with sensor noise."""
    working = state.status == "WORKING"
    moving = state.speed > 0

    def noisy(value: float, sigma: float, digits: int = 2) -> float:
        return round(value + rng.gauss(0.0, sigma), digits)

    if state.status == "CHARGING":
        current = -25.0  # negative: flowing into the battery
    elif working:
        current = 10.0 + 2.0 * state.speed
    else:
        current = 2.0
    return {
        "BATTERY_SOC": round(state.battery, 2),
        "BATTERY_VOLTAGE": noisy(44.0 + 8.0 * state.battery / 100, 0.05),
        "BATTERY_CURRENT": noisy(current, 0.3),
        "MOTOR_TEMPERATURE": noisy(state.motor_temp, 0.2),
        "CPU_USAGE": clamp(noisy(35.0 + (20.0 if working else 0.0), 3.0), 0.0, 100.0),
        "MEMORY_USAGE": clamp(noisy(50.0, 1.0), 0.0, 100.0),
        "SIGNAL_STRENGTH": noisy(-65.0, 2.0, 1),
        "VELOCITY": round(state.speed, 3),
        "VIBRATION": max(0.0, noisy(0.5 + (0.3 * state.speed if moving else 0.0), 0.05, 3)),
        "AMBIENT_TEMPERATURE": noisy(22.0, 0.1),
    }


def initial_state(
    robot_id: str,
    rng: random.Random,
    *,
    status: str | None = None,
    battery: float | None = None,
    last_pose: dict[str, Any] | None = None,
) -> RobotState:
    """A robot resuming from its database row. OFFLINE robots boot into work (or the charger);
    MAINTENANCE and ERROR robots stay halted until an operator sends RESUME."""
    level = battery if battery is not None else rng.uniform(60.0, 100.0)
    if status is None or status == "OFFLINE":
        status = "WORKING" if level >= LOW_BATTERY else "CHARGING"
    x, y = random_waypoint(rng)
    heading = rng.uniform(-math.pi, math.pi)
    position = (last_pose or {}).get("position") if isinstance(last_pose, dict) else None
    if isinstance(position, dict):
        try:
            x, y = inside_floor(float(position.get("x", x)), float(position.get("y", y)))
        except (TypeError, ValueError):
            pass
    quaternion = (last_pose or {}).get("orientation") if isinstance(last_pose, dict) else None
    if isinstance(quaternion, dict):
        try:
            heading = 2 * math.atan2(float(quaternion.get("z", 0.0)), float(quaternion.get("w", 1.0)))
        except (TypeError, ValueError):
            pass
    return RobotState(
        robot_id=robot_id,
        status=status,
        battery=clamp(level, 0.0, 100.0),
        x=x,
        y=y,
        heading=heading,
        cruise_speed=rng.uniform(0.8, 1.4),
        work_drain_per_h=rng.uniform(2.0, 3.0),
        error_count=1 if status == "ERROR" else 0,
    )
