"""The service's Prometheus metrics, in their own registry, appended to BentoML's ``/metrics``.

Names follow Prometheus conventions (``_total`` counters, ``_seconds`` durations, base units).
Derived rates are left to PromQL: cache hit rate is
``cca_cache_lookups_total{result="hit"} / ignoring(result) sum(cca_cache_lookups_total)``,
review rate ``cca_decisions_total{stage="review"} / ignoring(stage) sum(cca_decisions_total)``.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import values as prometheus_values

from cca.tickets import Decision

_LATENCY = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_STAGE = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 2.5)


LLM_OUTCOMES = ("ok", "invalid", "failures", "rate_limited", "rejected", "skipped", "budget",
                "retries", "prompt_echoes", "no_examples")


class ServiceMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("cca_http_requests", "HTTP requests answered, by endpoint and "
                                "status code.", ["endpoint", "status"], registry=r)
        self.request_seconds = Histogram(
            "cca_http_request_duration_seconds", "Time to answer a request, end to end inside "
            "the service.", ["endpoint"], buckets=_LATENCY, registry=r)
        self.stage_seconds = Histogram(
            "cca_stage_duration_seconds", "Time one ticket spent in each cascade stage.",
            ["stage"], buckets=_STAGE, registry=r)
        self.decisions = Counter("cca_decisions", "Tickets answered, by the stage that "
                                 "answered (review = needs a person).", ["stage"], registry=r)
        self.cache_lookups = Counter("cca_cache_lookups", "Vector-cache lookups, by result.",
                                     ["result"], registry=r)
        self.replays = Counter("cca_idempotent_replays", "Requests answered with the stored "
                               "decision for the same ticket id and content.", registry=r)
        self.rate_limited = Counter("cca_rate_limited", "Requests refused with 429.", registry=r)
        self.llm_tokens = Counter("cca_llm_tokens", "LLM tokens used, by kind.", ["kind"],
                                  registry=r)
        self.cost = Counter("cca_cost_usd", "Spend on paid APIs (LLM, embeddings), USD.",
                            registry=r)
        self.batch_size = Histogram("cca_batch_size", "Tickets per cascade batch (concurrent "
                                    "requests are grouped).", buckets=(1, 2, 4, 8, 16, 32, 64,
                                                                      128, 256), registry=r)
        # Under `bentoml serve` every worker writes its values to PROMETHEUS_MULTIPROC_DIR and
        # BentoML's /metrics aggregates them; the modes say how gauges combine across workers.
        self.spool_pending = Gauge("cca_audit_spool_pending", "Audit records on local disk "
                                   "waiting for PostgreSQL.", registry=r,
                                   multiprocess_mode="livesum")
        self.database_up = Gauge("cca_database_up", "1 while audit records reach PostgreSQL.",
                                 registry=r, multiprocess_mode="livemin")
        self.redis_up = Gauge("cca_redis_up", "1 while Redis answers.", registry=r,
                              multiprocess_mode="livemin")
        self.llm_calls = Counter("cca_llm_calls", "LLM stage outcomes: ok, invalid (no "
                                 "candidate label in JSON), failures, rate_limited, rejected, "
                                 "skipped (breaker open), budget (daily cap), retries, "
                                 "prompt_echoes, no_examples (empty retrieval).",
                                 ["outcome"], registry=r)
        self.llm_spend_today = Gauge("cca_llm_spend_today_usd", "LLM spend so far this UTC "
                                     "day (shared across workers through Redis).", registry=r,
                                     multiprocess_mode="livemax")
        self.llm_budget_exhausted = Gauge("cca_llm_budget_exhausted", "1 once the day's LLM "
                                          "budget is spent: the stage is skipped (alert on "
                                          "it).", registry=r, multiprocess_mode="livemax")
        self.llm_breaker_open = Gauge("cca_llm_circuit_open", "1 while the LLM stage is "
                                      "skipped after failures.", registry=r,
                                      multiprocess_mode="livemax")
        self.shadow = Counter("cca_shadow_decisions", "Challenger runs in shadow mode, by "
                              "agreement with the champion.", ["agreement"], registry=r)
        self.shadow_dropped = Counter("cca_shadow_dropped", "Shadow runs skipped because the "
                                      "shadow queue was full.", registry=r)
        self.model_info = Gauge("cca_model_info", "The model bundles being served (value 1).",
                                ["champion_bundle", "champion_registry_version",
                                 "champion_source", "cascade_version", "challenger_bundle"],
                                registry=r, multiprocess_mode="livemax")
        # The ticketing loop (serving.intake): webhooks in, write-backs out, corrections.
        self.webhooks = Counter("cca_webhooks", "Webhook deliveries, by source and outcome "
                                "(accepted, duplicate, ignored, refused_<status>).",
                                ["source", "outcome"], registry=r)
        self.writebacks = Counter("cca_writebacks", "Write-backs to ticketing systems, by "
                                  "source, outcome (routed, review, found-written, retry, "
                                  "dead-letter) and status (ok, the vendor's HTTP status, "
                                  "or network).", ["source", "outcome", "status"],
                                  registry=r)
        self.reroutes = Counter("cca_reroutes", "Auto-routed tickets a person moved to "
                                "another group, by source and the stage that routed them.",
                                ["source", "stage"], registry=r)
        self.intake_depth = Gauge("cca_intake_queue_depth", "Accepted events not yet done.",
                                  registry=r, multiprocess_mode="livemax")
        self.intake_oldest = Gauge("cca_intake_oldest_pending_seconds", "Age of the oldest "
                                   "accepted event not yet done.", registry=r,
                                   multiprocess_mode="livemax")
        self.intake_dead = Gauge("cca_intake_dead_letters", "Events on the dead-letter list "
                                 "(`cca integrations dead-letters`).", registry=r,
                                 multiprocess_mode="livemax")
        # In multiprocess mode BentoML's collector already reads these values from disk.
        self.multiprocess = prometheus_values.ValueClass is not prometheus_values.MutexValue

    def observe_decisions(self, decisions: list[Decision]) -> None:
        for d in decisions:
            self.decisions.labels(d.stage).inc()
            for stage, ms in d.timings_ms.items():
                self.stage_seconds.labels(stage).observe(ms / 1000)
            if "cache" in d.timings_ms:
                self.cache_lookups.labels("hit" if d.stage == "cache" else "miss").inc()
            if d.cost_usd:
                self.cost.inc(d.cost_usd)

    def render(self) -> str:
        """What to append to BentoML's /metrics: nothing when it already collected ours."""
        if self.multiprocess:
            return ""
        return generate_latest(self.registry).decode("utf-8")
