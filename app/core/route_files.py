"""Reading uploaded program and route files (pure: bytes in, data out; ValueError says what is wrong).

Programs are a JSON object or a YAML mapping. Routes are JSON or YAML of the shape
`{name?, waypoints: [{position: {latitude, longitude, altitude?}, orientation?: {x, y, z, w},
actions?: [{type, parameters?, duration?}]}]}`, or GPX (its waypoints, else its first route's
points, else its first track's points). YAML is read with `safe_load` (no objects), GPX only after
defusedxml refused DTDs and entities (no billion laughs, no external entities).
"""

from __future__ import annotations

import json
import math
from typing import Any

import defusedxml.ElementTree
import gpxpy
import gpxpy.gpx
import yaml
from defusedxml import DefusedXmlException

MAX_WAYPOINTS = 10_000
MAX_ACTIONS = 100


def _structured(data: bytes, suffix: str) -> Any:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("the file is not UTF-8 text") from None
    if suffix == "json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"invalid JSON: {exc.msg} at line {exc.lineno}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"invalid YAML: {str(exc).splitlines()[0]}") from None


def read_program(data: bytes, suffix: str) -> dict[str, Any]:
    program = _structured(data, suffix)
    if not isinstance(program, dict):
        raise ValueError("a program must be a JSON object or a YAML mapping")
    return program


def _number(value: Any, what: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number")
    if not low <= value <= high:
        raise ValueError(f"{what} must be between {low:g} and {high:g}")
    return float(value)


def _waypoint(n: int, raw: Any) -> dict[str, Any]:
    where = f"waypoints[{n}]"
    if not isinstance(raw, dict) or not isinstance(raw.get("position"), dict):
        raise ValueError(f"{where} needs a position object")
    pos = raw["position"]
    position: dict[str, Any] = {
        "latitude": _number(pos.get("latitude"), f"{where}.position.latitude", -90, 90),
        "longitude": _number(pos.get("longitude"), f"{where}.position.longitude", -180, 180),
        "altitude": None
        if pos.get("altitude") is None
        else _number(pos["altitude"], f"{where}.position.altitude", -1e5, 1e5),
    }
    orientation = raw.get("orientation")
    if orientation is not None:
        if not isinstance(orientation, dict):
            raise ValueError(f"{where}.orientation must be an object with x, y, z, w")
        orientation = {k: _number(orientation.get(k), f"{where}.orientation.{k}", -1, 1) for k in "xyzw"}
    actions = raw.get("actions") or []
    if not isinstance(actions, list) or len(actions) > MAX_ACTIONS:
        raise ValueError(f"{where}.actions must be a list of at most {MAX_ACTIONS} actions")
    checked = []
    for m, action in enumerate(actions):
        if not isinstance(action, dict) or not isinstance(action.get("type"), str) or not action["type"]:
            raise ValueError(f"{where}.actions[{m}] needs a type")
        duration = action.get("duration")
        if duration is not None and (
            isinstance(duration, bool) or not isinstance(duration, int) or duration < 0
        ):
            raise ValueError(f"{where}.actions[{m}].duration must be a whole number of seconds")
        parameters = action.get("parameters")
        if parameters is not None and not isinstance(parameters, dict):
            raise ValueError(f"{where}.actions[{m}].parameters must be an object")
        checked.append({"type": action["type"][:100], "parameters": parameters, "duration": duration})
    return {"sequence": n, "position": position, "orientation": orientation, "actions": checked}


def _gpx(data: bytes) -> tuple[str | None, list[dict[str, Any]]]:
    try:
        defusedxml.ElementTree.fromstring(data)
        parsed = gpxpy.parse(data.decode("utf-8"))
    except (DefusedXmlException, defusedxml.ElementTree.ParseError, UnicodeDecodeError) as exc:
        raise ValueError(f"invalid GPX: {exc}") from None
    except gpxpy.gpx.GPXException as exc:
        raise ValueError(f"invalid GPX: {exc}") from None
    points: list[Any] = list(parsed.waypoints)
    name = parsed.name
    if not points and parsed.routes:
        points, name = list(parsed.routes[0].points), name or parsed.routes[0].name
    if not points and parsed.tracks:
        points = [p for segment in parsed.tracks[0].segments for p in segment.points]
        name = name or parsed.tracks[0].name
    raw = [
        {"position": {"latitude": p.latitude, "longitude": p.longitude, "altitude": p.elevation}}
        for p in points
    ]
    return name, raw


def read_route(data: bytes, suffix: str) -> tuple[str | None, list[dict[str, Any]]]:
    """The route's name (None when the file names none) and its checked waypoints."""
    if suffix == "gpx":
        name, raw = _gpx(data)
    else:
        route = _structured(data, suffix)
        if not isinstance(route, dict) or not isinstance(route.get("waypoints"), list):
            raise ValueError("a route must be an object with a waypoints list")
        name = route.get("name") if isinstance(route.get("name"), str) else None
        raw = route["waypoints"]
    if not raw:
        raise ValueError("the route has no waypoints")
    if len(raw) > MAX_WAYPOINTS:
        raise ValueError(f"a route may have at most {MAX_WAYPOINTS} waypoints")
    return (name.strip()[:200] or None) if name else None, [_waypoint(n, w) for n, w in enumerate(raw)]
