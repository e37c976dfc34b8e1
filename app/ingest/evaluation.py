"""What one sample does to one (edict, robot) pair: the pure part of the rule evaluator.

`step` moves the pair's state (a JSON-able dict, stored in edict_rule_state) through debounce,
breach, hysteresis, clear and cooldown; `Edict.could_breach` lets an idle pair of threshold rules
skip a round whose values cannot match. docs/edicts.md states the semantics.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import Any

from app.core.edict_rules import Rule, Rules
from app.ingest.messages import Sample

SEVERITY_RANK = {"INFO": 0, "WARNING": 1, "CRITICAL": 2}


@dataclass(frozen=True, slots=True)
class Edict:
    id: str
    name: str
    severity: str
    rules: Rules
    scope: dict[str, frozenset[str]]

    @property
    def thresholds_only(self) -> bool:
        """Only threshold (and missing-data) rules: no memory per sample, so `could_breach` may
        skip the pair for a whole round."""
        return all(r.kind in ("threshold", "missing") for r in self.rules.rules)

    def could_breach(self, robot_id: str, bounds: dict[str, tuple[float, float]]) -> bool:
        """Whether any sample of a round, whose values per metric lie within `bounds`, might
        match; False lets the evaluator skip an idle pair without stepping through the samples."""
        found = [_could(rule, robot_id, bounds) for rule in self.rules.rules]
        return all(found) if self.rules.operator == "AND" else any(found)

    def applies(self, robot_id: str, robot: dict[str, Any]) -> bool:
        s = self.scope
        return (
            (not s["robots"] or robot_id in s["robots"])
            and (not s["fleets"] or robot["fleet_id"] in s["fleets"])
            and (not s["locations"] or robot["locus_id"] in s["locations"])
            and (not s["taskTypes"] or robot["task_type"] in s["taskTypes"])
        )


def _could(rule: Rule, robot_id: str, bounds: dict[str, tuple[float, float]]) -> bool:
    if rule.kind == "missing" or rule.metric is None:
        return False
    found = bounds.get(rule.metric)
    if found is None:
        return False
    lo, hi = found
    limit = rule.overrides.get(robot_id, rule.value)
    op = rule.op
    if op == "gt":
        return hi > limit
    if op == "gte":
        return hi >= limit
    if op == "lt":
        return lo < limit
    if op == "lte":
        return lo <= limit
    if op == "eq":
        return lo <= limit <= hi
    return not lo == hi == limit


def bounds_of(samples: list[Sample]) -> dict[str, tuple[float, float]]:
    """The lowest and highest value of each metric over the samples (by the names rules use)."""
    lows: dict[str, float] = {}
    highs: dict[str, float] = {}
    for sample in samples:
        values = dict(sample.metrics or {})
        if sample.battery_level is not None:
            values["battery_level"] = sample.battery_level
        if sample.health_score is not None:
            values["health_score"] = sample.health_score
        for name, value in values.items():
            if name in lows:
                if value < lows[name]:
                    lows[name] = value
                elif value > highs[name]:
                    highs[name] = value
            else:
                lows[name] = highs[name] = value
    return {name: (lows[name], highs[name]) for name in lows}


def _cmp(op: str, a: float, b: float) -> bool:
    if op == "gt":
        return a > b
    if op == "gte":
        return a >= b
    if op == "lt":
        return a < b
    if op == "lte":
        return a <= b
    if op == "eq":
        return a == b
    return a != b


def _still(op: str, a: float, b: float, h: float) -> bool:
    """Whether a breached threshold still holds: it must pass back by the hysteresis to clear."""
    if op in ("gt", "gte"):
        return _cmp(op, a, b - h)
    if op in ("lt", "lte"):
        return _cmp(op, a, b + h)
    return _cmp(op, a, b)


def value_of(sample: Sample, metric: str) -> float | None:
    if metric == "battery_level":
        return sample.battery_level
    if metric == "health_score":
        return sample.health_score
    metrics = sample.metrics or {}
    value = metrics.get(metric)
    if value is None:
        value = metrics.get(metric.upper())
    return value


def _rule(rule: Rule, robot_id: str, sample: Sample, t: float, state: dict[str, Any]) -> Any:
    """(matched, still, value, severity or None) of one rule on one sample; None when the sample
    says nothing about it. Rate and anomaly rules update their memory in `state`."""
    if rule.kind == "missing":
        return (False, False, None, None)
    assert rule.metric is not None
    value = value_of(sample, rule.metric)
    if value is None:
        return None
    if rule.kind == "threshold":
        limit = rule.overrides.get(robot_id, rule.value)
        return (_cmp(rule.op, value, limit), _still(rule.op, value, limit, rule.hysteresis), value, None)
    if rule.kind == "rate":
        prev = state.setdefault("prev", {})
        before = prev.get(rule.metric)
        prev[rule.metric] = [value, t]
        if before is None or t <= before[1]:
            return None
        rate = (value - before[0]) / (t - before[1])
        return (
            _cmp(rule.op, rate, rule.value),
            _still(rule.op, rate, rule.value, rule.hysteresis),
            rate,
            None,
        )
    # anomaly: |z| against an exponentially weighted mean and variance of the metric
    ewma = state.setdefault("ewma", {})
    mean, var, n = ewma.get(rule.metric, [value, 0.0, 0])
    tier = None
    if n >= rule.min_samples and var > 0:
        z = abs(value - mean) / math.sqrt(var)
        for threshold, severity in rule.tiers:
            if z >= threshold:
                tier = severity
        result = (tier is not None, tier is not None, z, tier)
    else:
        result = None
    diff = value - mean
    incr = rule.alpha * diff
    ewma[rule.metric] = [mean + incr, (1 - rule.alpha) * (var + diff * incr), n + 1]
    return result


def step(
    edict: Edict, robot_id: str, state: dict[str, Any], sample: Sample
) -> tuple[str, dict[str, Any]] | None:
    """One sample through one (edict, robot) pair: ("breach", details), ("clear", {}) or None;
    details["repeat"] is true for a breach within the cooldown of the last one.
    Mutates `state` (docs/edicts.md: debounce, hysteresis, cooldown)."""
    rules = edict.rules
    t = sample.ts.timestamp()
    results = [_rule(rule, robot_id, sample, t, state) for rule in rules.rules]
    if any(r is None for r in results):
        return None  # the sample lacks a metric of the edict: it neither breaches nor clears
    if rules.operator == "AND":
        matched, still = all(r[0] for r in results), all(r[1] for r in results)
    else:
        matched, still = any(r[0] for r in results), any(r[1] for r in results)
    if not state.get("b"):
        if not matched:
            state.pop("n", None)
            state.pop("since", None)
            return None
        state["n"] = state.get("n", 0) + 1
        since = state.setdefault("since", t)
        if state["n"] < rules.debounce_samples or t - since < rules.debounce_s:
            return None
        state["b"] = True
        state.pop("n", None)
        state.pop("since", None)
        fired = state.get("fired")
        # Within the cooldown of the last breach that notified: a repeat, counted on its alert.
        repeat = fired is not None and t - fired < rules.cooldown_s
        if not repeat:
            state["fired"] = t
        tiers = [r[3] for r in results if r[3] is not None]
        severity = max(tiers, key=SEVERITY_RANK.__getitem__) if tiers else edict.severity
        values = {
            rule.metric: r[2] for rule, r in zip(rules.rules, results, strict=True) if rule.metric is not None
        }
        return "breach", {"severity": severity, "values": values, "repeat": repeat}
    if still:
        state.pop("c", None)
        return None
    state["c"] = state.get("c", 0) + 1
    if state["c"] < rules.clear_samples:
        return None
    for key in ("b", "c"):
        state.pop(key, None)
    return "clear", {}


def idle(state: dict[str, Any], now: float, cooldown_s: float) -> bool:
    """Nothing worth a row: not breached, nothing counting, no memory, no cooldown running."""
    fired = state.get("fired")
    if fired is not None and now - fired >= cooldown_s:
        del state["fired"]
    return not state


def describe(edict: Edict, values: dict[str, Any]) -> str:
    parts = []
    for rule in edict.rules.rules:
        if rule.kind == "missing":
            parts.append(f"no telemetry for {rule.seconds:g} s")
        elif rule.kind == "anomaly":
            parts.append(f"{rule.metric} anomalous (|z| {values.get(rule.metric or '', 0):.1f})")
        elif rule.metric is not None:
            got = values.get(rule.metric)
            shown = f"{got:.4g}" if isinstance(got, float | int) else got
            what = f"{rule.metric} rate" if rule.kind == "rate" else rule.metric
            parts.append(f"{what} {shown} ({rule.op} {rule.value:g})")
    return f"{edict.name}: " + f" {edict.rules.operator.lower()} ".join(parts)


class Candidates:
    """The edicts of one robot, with its single-threshold ones indexed by (metric, op) and
    sorted by threshold: a round finds those its values could breach by bisection instead of
    checking each (100 edicts over 100 robots are 10,000 checks a round otherwise)."""

    def __init__(self, robot_id: str, edicts: list[Edict]) -> None:
        self.edicts = edicts
        self.by_id = {e.id: e for e in edicts}
        self.general: list[Edict] = []
        groups: dict[tuple[str, str], list[tuple[float, Edict]]] = {}
        for edict in edicts:
            rules = edict.rules.rules
            if len(rules) == 1 and rules[0].kind == "threshold" and rules[0].op != "neq":
                rule = rules[0]
                assert rule.metric is not None
                groups.setdefault((rule.metric, rule.op), []).append(
                    (rule.overrides.get(robot_id, rule.value), edict)
                )
            elif not all(r.kind == "missing" for r in rules):
                # Missing-data edicts only clear from samples, and then they have a state row.
                self.general.append(edict)
        self.index = {
            key: ([v for v, _ in items], [e for _, e in items])
            for key, items in ((k, sorted(g, key=lambda x: x[0])) for k, g in groups.items())
        }

    def due(self, bounds: dict[str, tuple[float, float]], with_state: set[str]) -> list[Edict]:
        """The edicts to step through this round's samples: those with a state, the general
        ones, and the indexed thresholds some value of the round passes."""
        out = {i: self.by_id[i] for i in with_state if i in self.by_id}
        for edict in self.general:
            out[edict.id] = edict
        for (metric, op), (values, edicts) in self.index.items():
            found = bounds.get(metric)
            if found is None:
                continue
            lo, hi = found
            if op == "gt":
                chosen = edicts[: bisect.bisect_left(values, hi)]
            elif op == "gte":
                chosen = edicts[: bisect.bisect_right(values, hi)]
            elif op == "lt":
                chosen = edicts[bisect.bisect_right(values, lo) :]
            elif op == "lte":
                chosen = edicts[bisect.bisect_left(values, lo) :]
            else:
                chosen = edicts[bisect.bisect_left(values, lo) : bisect.bisect_right(values, hi)]
            for edict in chosen:
                out[edict.id] = edict
        return list(out.values())
