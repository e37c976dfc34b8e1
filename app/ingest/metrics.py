"""Ingest counters, exported as Prometheus families at scrape time (GET /metrics).

Plain integers updated on the event loop (no locks, no library call per message); one
`IngestMetrics` per pipeline. `families()` turns them into prometheus-client metrics when scraped
(`app.infra.metrics.Metrics.collect_with`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric


class IngestMetrics:
    def __init__(self) -> None:
        # (source, kind, outcome) -> messages
        self.messages: Counter[tuple[str, str, str]] = Counter()
        # reason -> messages sent to dead_letters
        self.rejected: Counter[str] = Counter()
        self.batches = 0
        self.batch_items = 0
        self.batch_seconds = 0.0
        self.batch_retries = 0
        self.batch_failures = 0
        self.events_published = 0
        self.publish_failures = 0
        self.robot_cache_refreshes = 0
        self.mqtt_connects = 0
        self.mqtt_disconnects = 0
        self.mqtt_read_pauses = 0
        # Callables read at render time (queue depths).
        self.gauges: dict[str, Callable[[], float]] = {}

    def count(self, source: str, kind: str, outcome: str, reason: str | None = None) -> None:
        self.messages[(source, kind, outcome)] += 1
        if reason is not None:
            self.rejected[reason] += 1

    def total(self, outcome: str | None = None) -> int:
        return sum(n for (_, _, o), n in self.messages.items() if outcome is None or o == outcome)

    def families(self) -> list[Metric]:
        """The counters as Prometheus families, read at scrape time (`Metrics.collect_with`)."""
        messages = CounterMetricFamily(
            "sepulki_ingest_messages",
            "Robot messages by source, kind and outcome (stored, duplicate, rejected).",
            labels=["source", "kind", "outcome"],
        )
        for (source, kind, outcome), n in sorted(self.messages.items()):
            messages.add_metric([source, kind, outcome], n)
        letters = CounterMetricFamily(
            "sepulki_ingest_dead_letters", "Messages written to dead_letters, by reason.", labels=["reason"]
        )
        for reason, n in sorted(self.rejected.items()):
            letters.add_metric([reason], n)
        families: list[Metric] = [messages, letters]
        for name, help_text, value in (
            ("batches", "Committed batches.", self.batches),
            ("batch_items", "Messages in committed batches.", self.batch_items),
            ("batch_seconds", "Time spent writing and committing batches.", round(self.batch_seconds, 6)),
            (
                "batch_retries",
                "Batch transactions retried after a transient database error.",
                self.batch_retries,
            ),
            (
                "batch_failures",
                "Batches given up on (messages left unacknowledged, the broker redelivers them).",
                self.batch_failures,
            ),
            (
                "events_published",
                "Events published after commit (bellows, robot status, command updates).",
                self.events_published,
            ),
            (
                "publish_failures",
                "Publishes that failed after commit (subscribers catch up from the event log).",
                self.publish_failures,
            ),
            ("robot_cache_refreshes", "Reloads of the known-robot cache.", self.robot_cache_refreshes),
            ("mqtt_connects", "MQTT (re)connections.", self.mqtt_connects),
            ("mqtt_disconnects", "MQTT disconnections.", self.mqtt_disconnects),
            (
                "mqtt_read_pauses",
                "Times the MQTT socket stopped being read: messages in flight reached the window.",
                self.mqtt_read_pauses,
            ),
        ):
            families.append(CounterMetricFamily(f"sepulki_ingest_{name}", help_text, value=value))
        for name, read in sorted(self.gauges.items()):
            families.append(
                GaugeMetricFamily(
                    f"sepulki_ingest_{name}", name.replace("_", " ").capitalize() + ".", value=read()
                )
            )
        return families
