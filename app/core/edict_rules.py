"""An edict's `rules` JSON, parsed into what the evaluator runs (docs/edicts.md has the format).

Pure: parsing never touches I/O, so `app.edicts` refuses a bad rule at addEdict/updateEdict time
with BAD_USER_INPUT naming the bad part (`rules.condition.rules[0].op ...`), and the evaluator
(`app.ingest.rules`) compiles the same text the same way when it loads active edicts.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, field
from typing import Any

from app.core.errors import Invalid

OPS = ("gt", "gte", "lt", "lte", "eq", "neq")
OPERATORS = ("AND", "OR")
KINDS = ("threshold", "rate", "missing", "anomaly")
ACTIONS = ("ALERT", "WARN", "NOTIFY", "THROTTLE", "EMERGENCY_STOP")
SEVERITIES = ("INFO", "WARNING", "CRITICAL")
# Sample fields a metric name may mean; any other name is looked up in the sample's `metrics`.
FIELD_METRICS = {
    "battery_level": "battery_level",
    "batterylevel": "battery_level",
    "battery": "battery_level",
    "health_score": "health_score",
    "healthscore": "health_score",
    "health": "health_score",
}
MAX_RULES = 50


@dataclass(frozen=True, slots=True)
class Rule:
    """One condition: `kind` threshold (metric op value), rate (per second), missing (no data for
    `seconds`) or anomaly (|z| against an EWMA baseline reaching a tier)."""

    kind: str
    metric: str | None = None
    op: str = "gt"
    value: float = 0.0
    hysteresis: float = 0.0
    overrides: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    alpha: float = 0.1
    min_samples: int = 20
    tiers: tuple[tuple[float, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Action:
    type: str
    parameters: dict[str, Any]
    immediate: bool


@dataclass(frozen=True, slots=True)
class Rules:
    operator: str
    rules: tuple[Rule, ...]
    actions: tuple[Action, ...]
    debounce_samples: int = 1
    debounce_s: float = 0.0
    clear_samples: int = 1
    cooldown_s: float = 0.0

    @property
    def metrics(self) -> frozenset[str]:
        return frozenset(r.metric for r in self.rules if r.metric is not None)


def metric_key(name: str) -> str:
    """A sample field's name for `battery_level`-like names, else the name as the robot sends it."""
    return FIELD_METRICS.get(name.lower().replace("-", "_"), name)


def _bad(where: str, what: str) -> Invalid:
    return Invalid(f"{where} {what}", field="rules")


def _number(value: Any, where: str, *, minimum: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _bad(where, "must be a finite number")
    if minimum is not None and value < minimum:
        raise _bad(where, f"must be at least {minimum:g}")
    return float(value)


def _rule(raw: Any, where: str, default_hysteresis: float) -> Rule:
    if not isinstance(raw, dict):
        raise _bad(where, "must be an object such as {metric, op, value}")
    kind = raw.get("kind", "threshold")
    if kind not in KINDS:
        raise _bad(f"{where}.kind", f"must be one of {', '.join(KINDS)}")
    if kind == "missing":
        return Rule("missing", seconds=_number(raw.get("seconds"), f"{where}.seconds", minimum=1))
    metric = raw.get("metric")
    if not isinstance(metric, str) or not 1 <= len(metric) <= 100:
        raise _bad(f"{where}.metric", "must be a metric name of 1 to 100 characters")
    if kind == "anomaly":
        tiers_raw = raw.get("tiers", [{"z": 3, "severity": "WARNING"}])
        if not isinstance(tiers_raw, list) or not tiers_raw:
            raise _bad(f"{where}.tiers", "must be a non-empty list of {z, severity}")
        tiers = []
        for i, tier in enumerate(tiers_raw):
            if not isinstance(tier, dict) or tier.get("severity") not in SEVERITIES:
                raise _bad(f"{where}.tiers[{i}]", f"must be {{z, severity}} with severity in {SEVERITIES}")
            tiers.append((_number(tier.get("z"), f"{where}.tiers[{i}].z", minimum=0.1), tier["severity"]))
        alpha = _number(raw.get("alpha", 0.1), f"{where}.alpha", minimum=0.001)
        if alpha > 1:
            raise _bad(f"{where}.alpha", "must be at most 1")
        min_samples = raw.get("minSamples", 20)
        if not isinstance(min_samples, int) or isinstance(min_samples, bool) or min_samples < 2:
            raise _bad(f"{where}.minSamples", "must be an integer of at least 2")
        return Rule(
            "anomaly",
            metric_key(metric),
            alpha=alpha,
            min_samples=min_samples,
            tiers=tuple(sorted(tiers)),
        )
    op = raw.get("op")
    if op not in OPS:
        raise _bad(f"{where}.op", f"must be one of {', '.join(OPS)}")
    value = _number(raw.get("value"), f"{where}.value")
    hysteresis = _number(raw.get("hysteresis", default_hysteresis), f"{where}.hysteresis", minimum=0)
    overrides_raw = raw.get("overrides", {})
    if not isinstance(overrides_raw, dict):
        raise _bad(f"{where}.overrides", "must map robot ids to numbers")
    overrides = {}
    for robot, threshold in overrides_raw.items():
        try:
            robot_id = str(uuid.UUID(str(robot)))
        except ValueError:
            raise _bad(f"{where}.overrides", f"key {str(robot)[:40]!r} is not a robot id") from None
        overrides[robot_id] = _number(threshold, f"{where}.overrides[{robot_id}]")
    return Rule(kind, metric_key(metric), op, value, hysteresis, overrides)


def _action(raw: Any, where: str) -> Action:
    if not isinstance(raw, dict) or not isinstance(raw.get("type"), str):
        raise _bad(where, "must be an object {type, parameters, immediate}")
    if raw["type"] not in ACTIONS:
        raise _bad(f"{where}.type", f"must be one of {', '.join(ACTIONS)}")
    parameters = raw.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise _bad(f"{where}.parameters", "must be an object")
    immediate = raw.get("immediate") or False
    if not isinstance(immediate, bool):
        raise _bad(f"{where}.immediate", "must be true or false")
    return Action(raw["type"], parameters, immediate)


def parse(rules: Any) -> Rules:
    """The rules of an edict, or Invalid (field `rules`) naming the first bad part."""
    if not isinstance(rules, dict):
        raise _bad("rules", "must be {condition: {type, operator, rules: [...]}, actions: [...]}")
    condition = rules.get("condition")
    if not isinstance(condition, dict):
        raise _bad("rules.condition", "must be an object {type, operator, rules}")
    if not isinstance(condition.get("type"), str):
        raise _bad("rules.condition.type", "must be a string, e.g. metric")
    operator = condition.get("operator")
    if operator not in OPERATORS:
        raise _bad("rules.condition.operator", "must be AND or OR")
    raw_rules = condition.get("rules")
    # An empty list is a policy without conditions yet: stored, never breached.
    if not isinstance(raw_rules, list) or len(raw_rules) > MAX_RULES:
        raise _bad("rules.condition.rules", f"must be a list of at most {MAX_RULES} rules")
    hysteresis = _number(rules.get("hysteresis", 0), "rules.hysteresis", minimum=0)
    parsed = tuple(_rule(r, f"rules.condition.rules[{i}]", hysteresis) for i, r in enumerate(raw_rules))
    actions = rules.get("actions")
    if not isinstance(actions, list):
        raise _bad("rules.actions", "must be a list of {type, parameters, immediate}")
    parsed_actions = tuple(_action(a, f"rules.actions[{i}]") for i, a in enumerate(actions))
    debounce = rules.get("debounce", {})
    if not isinstance(debounce, dict):
        raise _bad("rules.debounce", "must be {samples, seconds}")
    samples = debounce.get("samples", 1)
    if not isinstance(samples, int) or isinstance(samples, bool) or not 1 <= samples <= 10_000:
        raise _bad("rules.debounce.samples", "must be an integer from 1 to 10000")
    clear = debounce.get("clearSamples", 1)
    if not isinstance(clear, int) or isinstance(clear, bool) or not 1 <= clear <= 10_000:
        raise _bad("rules.debounce.clearSamples", "must be an integer from 1 to 10000")
    return Rules(
        operator=operator,
        rules=parsed,
        actions=parsed_actions,
        debounce_samples=samples,
        debounce_s=_number(debounce.get("seconds", 0), "rules.debounce.seconds", minimum=0),
        clear_samples=clear,
        cooldown_s=_number(rules.get("cooldownSeconds", 0), "rules.cooldownSeconds", minimum=0),
    )
