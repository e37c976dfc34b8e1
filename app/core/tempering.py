"""Tempering: a seeded random search over a design's numeric parameters (pure, no I/O).

The performance model is deliberately small and documented (docs/builds.md): every numeric
parameter of the pattern's schema `{name: {type: "number", min, max}}` is scaled to x in 0..1 and
`m` is their mean. Larger values mean a faster but hungrier and less precise robot:

    cycleTime      = 12 * (1.4 - 0.8 * m)   seconds per cycle
    energyPerCycle = 20 * (0.5 + m^2)       Wh per cycle
    accuracy       = 99.5 - 4 * m^2         percent

A goal names a metric and a target, MINIMIZE, MAXIMIZE or a number to approach; its weight scales
its share of the score. Constraints bound metrics: `{"energyPerCycle": {"max": 25}}`. The search
evaluates the current parameters and `iterations` random candidates (seeded, so a job run twice
finds the same answer) and keeps the best one that satisfies every constraint.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

METRICS: dict[str, tuple[str, Callable[[float], float]]] = {
    "cycleTime": ("s", lambda m: 12 * (1.4 - 0.8 * m)),
    "energyPerCycle": ("Wh", lambda m: 20 * (0.5 + m * m)),
    "accuracy": ("%", lambda m: 99.5 - 4 * m * m),
}
DIRECTIONS = ("MINIMIZE", "MAXIMIZE")


class TemperError(ValueError):
    """Tempering cannot proceed (the message says why); the job fails with it."""


@dataclass(frozen=True, slots=True)
class Goal:
    metric: str
    target: str  # MINIMIZE, MAXIMIZE or a number as text
    weight: float

    def score(self, value: float, baseline: float) -> float:
        scale = max(abs(baseline), 1e-9)
        if self.target == "MINIMIZE":
            return self.weight * (baseline - value) / scale
        if self.target == "MAXIMIZE":
            return self.weight * (value - baseline) / scale
        goal = float(self.target)
        return self.weight * (abs(baseline - goal) - abs(value - goal)) / scale


def parse_goals(goals: list[dict[str, Any]]) -> list[Goal]:
    """Goals from TemperInput; a ValueError names the bad one (the caller reports BAD_USER_INPUT)."""
    if not goals:
        raise ValueError("at least one goal is required")
    parsed = []
    for goal in goals:
        metric, target = str(goal.get("metric") or ""), str(goal.get("target") or "").strip()
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r}; known: {', '.join(METRICS)}")
        if target.upper() in DIRECTIONS:
            target = target.upper()
        else:
            try:
                number = float(target)
            except ValueError:
                raise ValueError(f"target must be MINIMIZE, MAXIMIZE or a number, got {target!r}") from None
            if not math.isfinite(number):
                raise ValueError("target must be a finite number")
        weight = goal.get("weight")
        parsed.append(Goal(metric, target, 1.0 if weight is None else float(weight)))
    return parsed


def check_constraints(constraints: Any) -> dict[str, dict[str, float]]:
    if constraints is None:
        return {}
    if not isinstance(constraints, dict):
        raise ValueError("constraints must be a JSON object of metric bounds")
    checked: dict[str, dict[str, float]] = {}
    for metric, bounds in constraints.items():
        if metric not in METRICS:
            raise ValueError(f"constraint on unknown metric {metric!r}; known: {', '.join(METRICS)}")
        if not isinstance(bounds, dict) or not set(bounds) <= {"min", "max"}:
            raise ValueError(f"constraint {metric} must be an object with min and/or max")
        values = {k: v for k, v in bounds.items()}
        if not all(isinstance(v, int | float) and math.isfinite(v) for v in values.values()):
            raise ValueError(f"constraint {metric} bounds must be finite numbers")
        checked[metric] = {k: float(v) for k, v in values.items()}
    return checked


def numeric_ranges(schema: Any) -> dict[str, tuple[float, float]]:
    """The pattern schema's numeric parameters with finite min < max."""
    ranges = {}
    for name, spec in (schema or {}).items():
        if isinstance(spec, dict) and spec.get("type") == "number":
            low, high = spec.get("min"), spec.get("max")
            if isinstance(low, int | float) and isinstance(high, int | float) and low < high:
                ranges[name] = (float(low), float(high))
    return ranges


def metrics_of(parameters: dict[str, float], ranges: dict[str, tuple[float, float]]) -> dict[str, float]:
    xs = [min(max((parameters[n] - lo) / (hi - lo), 0.0), 1.0) for n, (lo, hi) in ranges.items()]
    m = sum(xs) / len(xs)
    return {name: round(model(m), 4) for name, (_, model) in METRICS.items()}


def _feasible(metrics: dict[str, float], constraints: dict[str, dict[str, float]]) -> bool:
    return all(
        metrics[k] >= b.get("min", -math.inf) and metrics[k] <= b.get("max", math.inf)
        for k, b in constraints.items()
    )


def temper(
    schema: Any,
    defaults: Any,
    parameters: Any,
    goals: list[Goal],
    constraints: dict[str, dict[str, float]],
    iterations: int,
    seed: str,
) -> dict[str, Any]:
    """TemperResults as JSON: metrics, improvements, recommendations, optimizedParameters."""
    ranges = numeric_ranges(schema)
    if not ranges:
        raise TemperError("the pattern declares no numeric parameter with a min and max to optimise")
    current: dict[str, float] = {}
    for name, (low, high) in ranges.items():
        value = (parameters or {}).get(name, (defaults or {}).get(name, (low + high) / 2))
        current[name] = float(value) if isinstance(value, int | float) else (low + high) / 2
    baseline = metrics_of(current, ranges)

    def score(metrics: dict[str, float]) -> float:
        return sum(g.score(metrics[g.metric], baseline[g.metric]) for g in goals)

    # Not for secrets: a seeded generator makes a job reproducible.
    rng = random.Random(seed)  # noqa: S311
    best = current if _feasible(baseline, constraints) else None
    best_metrics, best_score = baseline, score(baseline) if best is not None else -math.inf
    for _ in range(iterations):
        candidate = {n: round(rng.uniform(lo, hi), 4) for n, (lo, hi) in ranges.items()}
        metrics = metrics_of(candidate, ranges)
        if _feasible(metrics, constraints) and (value := score(metrics)) > best_score:
            best, best_metrics, best_score = candidate, metrics, value
    if best is None:
        raise TemperError(f"no parameters within the pattern's ranges satisfy the constraints {constraints}")
    improvements = {
        name: {
            "before": baseline[name],
            "after": best_metrics[name],
            "changePercent": round(
                100 * (best_metrics[name] - baseline[name]) / max(abs(baseline[name]), 1e-9), 2
            ),
        }
        for name in METRICS
    }
    recommendations = [
        f"Set {name} to {best[name]:g} (now {current[name]:g})"
        for name in ranges
        if best[name] != current[name]
    ] or ["The current parameters already serve these goals best"]
    return {
        "metrics": best_metrics,
        "improvements": improvements,
        "recommendations": recommendations,
        "optimizedParameters": best,
        "score": round(best_score, 6),
        "iterations": iterations,
    }
