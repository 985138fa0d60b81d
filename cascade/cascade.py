"""The cascade: rules, vector cache, classifier, LLM, then human review.

Each stage runs only on the tickets every cheaper stage passed on, and every answer carries
the stage, confidence, neighbours, per-stage timings, model version and cost.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
from threadpoolctl import threadpool_limits

from cascade.classifier_gate import ClassifierGate
from cascade.llm_acceptance import judge, load_rule, target_precision
from cascade.llm_batch import ask_batch
from cascade.llm_prompt import describe
from cascade.llm_stage import DisabledLLMStage, LLMStage
from cascade.vector_cache import CachePolicy, decide
from cca.bundle import ModelBundle, load_bundle
from cca.embeddings import Embedder, embedder_for_model
from cca.errors import StateError
from cca.settings import Settings
from cca.store import Database, StoreUnavailable
from cca.store.vectors import nearest, track_records
from cca.tickets import Decision, Neighbour, Ticket
from redaction import Sanitizer
from rules import RuleSet, load_rules

log = logging.getLogger(__name__)


@dataclass
class Work:
    ticket: Ticket
    timings: dict[str, float]
    urgency: str = "normal"
    sla_breach: bool = False
    neighbours: list[Neighbour] = field(default_factory=list)
    vector: np.ndarray | None = None
    top_classes: list[tuple[str, float]] = field(default_factory=list)
    ranked: list[str] = field(default_factory=list)  # the classifier's labels, best first
    decision: Decision | None = None
    reason: str = ""  # why the classifier did not answer, for the review decision
    text_hash: str | None = None
    embed_cost: float = 0.0


class Cascade:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        bundle: ModelBundle,
        rules: RuleSet,
        embedder: Embedder,
        deep_embedder: Embedder | None = None,
        llm: LLMStage | None = None,
        sanitizer: Sanitizer | None = None,
    ) -> None:
        trained = (bundle.info.embedding_model_id, bundle.info.deep_embedding_model_id)
        configured = (embedder.model_id, deep_embedder.model_id if deep_embedder else None)
        if trained != configured:
            raise StateError(
                f"model {bundle.info.version} was trained with embeddings {trained} but the "
                f"configured embedders are {configured}: retrain or change CCA_EMBEDDING_*"
            )
        self.settings, self.db, self.bundle = settings, db, bundle
        self.rules, self.embedder, self.deep_embedder = rules, embedder, deep_embedder
        self.llm = llm or DisabledLLMStage()
        # Which LLM answers may route a ticket, measured by `cca llm calibrate` for this
        # endpoint and model; None (never calibrated): the LLM only suggests.
        self.llm_rule = load_rule(db, settings)
        # The model was trained on redacted text, and nothing past the rules (embedder,
        # classifier, LLM, logs) may see raw PII, so tickets are redacted right after the rules.
        self.sanitizer = sanitizer or Sanitizer.from_settings(settings)
        self.policy = CachePolicy.from_settings(settings)
        self.gate = ClassifierGate.of(bundle, settings)
        self.threshold = self.gate.threshold
        self.version = (
            f"{bundle.info.version}+rules.{rules.version}+{embedder.model_id}"
        )
        self.descriptions = {label: describe(label, bundle.info.departments.get(label))
                             for label in bundle.info.labels}
        # Set by the service to its in-memory copy of the vectors (``cca.store.vector_feed``);
        # it answers None while the copy is not usable, and pgvector answers instead.
        self.vector_search: Callable[[np.ndarray, int], list[list[Neighbour]] | None] | None = None
        self.refresh_track_records()
        # scikit-learn's BLAS threads spin after each call and starve onnxruntime's threads on
        # a small machine (throughput in benchmarks/RESULTS.md); one BLAS thread is plenty
        # for the small matrices the classifier multiplies.
        threadpool_limits(limits=settings.blas_threads, user_api="blas")

    @classmethod
    def load(cls, settings: Settings, db: Database, llm: LLMStage | None = None) -> Cascade:
        return cls.of_bundle(settings, db, load_bundle(settings.models_dir), llm)

    @classmethod
    def of_bundle(cls, settings: Settings, db: Database, bundle: ModelBundle,
                  llm: LLMStage | None = None) -> Cascade:
        """The cascade around ``bundle``, with the embedders it was trained with."""
        embedder = embedder_for_model(settings, bundle.info.embedding_model_id)
        assert embedder is not None
        return cls(settings, db, bundle, load_rules(settings.rules_path), embedder,
                   embedder_for_model(settings, bundle.info.deep_embedding_model_id),
                   llm if llm is not None else get_llm_stage(settings))

    def refresh_track_records(self) -> None:
        with self.db.begin() as conn:
            self.records = track_records(conn, self.embedder.model_id)

    def _decision(self, w: Work, stage: str, label: str | None, confidence: float,
                  **extra: object) -> Decision:
        return Decision(
            ticket_id=w.ticket.id, label=label,
            department=self.bundle.info.departments.get(label, label) if label else None,
            urgency=w.urgency, sla_breach=w.sla_breach, confidence=round(float(confidence), 4),
            stage=stage, neighbours=w.neighbours, timings_ms=w.timings,
            model_version=self.version, **extra,
        )

    def classify(self, ticket: Ticket, now: datetime | None = None) -> Decision:
        return self.classify_batch([ticket], now=now)[0]

    def classify_batch(self, tickets: list[Ticket], now: datetime | None = None) -> list[Decision]:
        work, waiting = self.start_batch(tickets, now)
        self.finish_batch(waiting)
        return [w.decision for w in work if w.decision is not None]

    def start_batch(self, tickets: list[Ticket], now: datetime | None = None
                    ) -> tuple[list[Work], list[Work]]:
        """Every stage but the LLM: (all tickets, those still waiting for the LLM).

        The service answers the decided ones at once and finishes the rest elsewhere, so a
        slow LLM never holds up a ticket the cheaper stages were sure about.
        """
        work = [Work(ticket=t, timings={}) for t in tickets]
        self._rules(work, now)
        # Every ticket is redacted, the rules' answers too: the audit keeps a hash of the
        # redacted text (the text every later stage, log and LLM sees), never of raw text.
        if work:
            self._redact(work)
        pending = [w for w in work if w.decision is None]
        if pending:
            cost = self._embed_and_search(pending)
            for w in pending:
                w.embed_cost = cost / len(pending)
            rest = [w for w in pending if w.decision is None]
            if rest:
                self._classifier(rest)
                self._review_without_llm([w for w in rest if w.decision is None])
        waiting = [w for w in work if w.decision is None]
        for w in work:
            if w.decision is not None:
                self._finalize(w)
        return work, waiting

    def finish_batch(self, waiting: list[Work]) -> None:
        """The LLM (or review) for what ``start_batch`` left undecided."""
        if waiting:
            self._llm_or_review(waiting)
            for w in waiting:
                self._finalize(w)

    def retrieve(self, ticket: Ticket) -> Work:
        """The ticket redacted, embedded and with its nearest labelled neighbours: what the
        LLM stage is given (to evaluate the LLM alone; any cache answer is left unused)."""
        work = [Work(ticket=ticket, timings={})]
        self._redact(work)  # the LLM only ever sees redacted text
        self._embed_and_search(work)
        return work[0]

    @property
    def llm_can_answer(self) -> bool:
        """False when the LLM stage makes no call (disabled, circuit breaker open, or the
        day's budget spent)."""
        return not (isinstance(self.llm, DisabledLLMStage)
                    or getattr(self.llm, "state", "") == "open"
                    or getattr(self.llm, "budget_exhausted", False))

    @staticmethod
    def _finalize(w: Work) -> None:
        assert w.decision is not None
        w.decision.cost_usd += w.embed_cost
        w.decision.text_hash = w.text_hash

    def _rules(self, work: list[Work], now: datetime | None) -> None:
        for w in work:
            t0 = time.perf_counter()
            hit = self.rules.apply(w.ticket, now=now)
            w.urgency, w.sla_breach = hit.urgency, hit.sla_breach
            w.timings["rules"] = (time.perf_counter() - t0) * 1000
            if hit.label and hit.confidence >= self.settings.rules_min_confidence:
                w.decision = self._decision(w, "rules", hit.label, hit.confidence,
                                            rule_id=hit.rule_id,
                                            reason=f"rule {hit.rule_id} matched")

    def _redact(self, todo: list[Work]) -> None:
        t0 = time.perf_counter()
        # Subjects and bodies in one call: one NER pass over the batch, not two.
        both = self.sanitizer.redact_many([w.ticket.subject for w in todo]
                                          + [w.ticket.body for w in todo])
        subjects, bodies = both[:len(todo)], both[len(todo):]
        ms = (time.perf_counter() - t0) * 1000 / len(todo)
        for w, subject, body in zip(todo, subjects, bodies, strict=True):
            w.ticket = w.ticket.model_copy(update={"subject": subject.text, "body": body.text})
            w.timings["redact"] = ms
            w.text_hash = w.ticket.content_hash()

    def _embed_and_search(self, todo: list[Work]) -> float:
        """Embed and search once per batch (the in-memory copy, else pgvector); returns the
        embedding cost."""
        texts = [w.ticket.text for w in todo]
        t0 = time.perf_counter()
        vectors = self.embedder.embed(texts)
        cost = 0.0
        if self.embedder.cost_per_1k_tokens_usd:
            cost = self.embedder.count_tokens(texts) / 1000 * self.embedder.cost_per_1k_tokens_usd
        t1 = time.perf_counter()
        found = self._neighbours(vectors)
        t2 = time.perf_counter()
        embed_ms, search_ms = (t1 - t0) * 1000 / len(todo), (t2 - t1) * 1000 / len(todo)
        for w, vector, neighbours in zip(todo, vectors, found, strict=True):
            w.timings["embed"], w.timings["cache"] = embed_ms, search_ms
            w.vector, w.neighbours = vector, neighbours
            answer = decide(neighbours, self.records, self.policy)
            if answer is not None:
                w.decision = self._decision(w, "cache", answer.label, answer.confidence,
                                            reason=answer.reason)
        return cost

    def _neighbours(self, vectors: np.ndarray) -> list[list[Neighbour]]:
        k = self.settings.cache_top_k
        if self.vector_search is not None:
            found = self.vector_search(vectors, k)
            if found is not None:
                return found
        try:
            return self.db.read(lambda conn: nearest(conn, self.embedder.model_id, vectors, k))
        except StoreUnavailable as exc:
            # PostgreSQL down: the cache is skipped and the classifier answers, so a
            # database outage costs cache hits, never answers.
            log.warning("vector cache skipped, PostgreSQL unreachable: %s",
                        str(exc.orig or exc).strip().splitlines()[0])
            return [[] for _ in vectors]

    def _classifier(self, todo: list[Work]) -> None:
        t0 = time.perf_counter()
        clf = self.bundle.classifier
        texts = [w.ticket.text for w in todo]
        deep_ms = 0.0

        def deep_vectors(rows: list[int]) -> np.ndarray:
            nonlocal deep_ms
            assert self.deep_embedder is not None
            t1 = time.perf_counter()
            vectors = self.deep_embedder.embed([texts[i] for i in rows])
            deep_ms = (time.perf_counter() - t1) * 1000
            return vectors

        vectors = np.vstack([w.vector for w in todo])
        parts = clf.predict_parts(texts, vectors,
                                  deep_vectors if self.deep_embedder is not None else None)
        proba, used_deep = parts.proba(), parts.used_deep
        trust = self.gate.scores(parts, proba, clf.labels, vectors,
                                 [w.neighbours for w in todo])
        ms = ((time.perf_counter() - t0) * 1000 - deep_ms) / len(todo)
        n_deep = max(int(used_deep.sum()), 1)
        labels = clf.labels
        for row, (w, p, deep) in enumerate(zip(todo, proba, used_deep, strict=True)):
            w.timings["classifier"] = ms
            if deep:
                w.timings["deep_embed"] = deep_ms / n_deep
            order = np.argsort(-p)[:max(3, self.settings.llm_max_candidates)]
            top = order[:3]
            w.ranked = [labels[i] for i in order]
            w.top_classes = [(labels[i], round(float(p[i]), 4)) for i in top]
            sure, why = self.gate.judge(labels[top[0]], float(p[top[0]]),
                                        None if trust is None else float(trust[row]))
            w.reason = why
            if sure:
                w.decision = self._decision(w, "classifier", labels[top[0]], p[top[0]],
                                            top_classes=w.top_classes, reason=why)

    def _review_without_llm(self, todo: list[Work]) -> None:
        """Review at once when even the classifier's best class is unlikely: the candidates
        would not hold the answer, so an LLM call would cost without helping (and it keeps
        the LLM's share of tickets down)."""
        floor = self.settings.llm_min_top_probability
        for w in todo:
            best = w.top_classes[0][1] if w.top_classes else 0.0
            if best < floor:
                w.decision = self._decision(
                    w, "review", None, best, top_classes=w.top_classes,
                    reason=f"no stage confident enough (classifier: {w.reason}); best "
                    f"probability below {floor:.2f}, not sent to the LLM")

    def _llm_or_review(self, todo: list[Work]) -> None:
        """The LLM's answer where its endpoint's acceptance rule trusts answers like it
        (``cascade.llm_acceptance``); otherwise review, the answer attached as a suggestion."""
        labels = self.bundle.info.labels
        answers = ask_batch(self.llm, self.db, todo, labels,
                            few_shot=self.settings.llm_max_few_shot,
                            max_concurrency=self.settings.llm_max_concurrency,
                            can_call=self.llm_can_answer, descriptions=self.descriptions)
        target = target_precision(self.settings)
        for w, answer in zip(todo, answers, strict=True):
            top_classes, cost = w.top_classes, answer.cost_usd if answer else 0.0
            suggested = answer if answer is not None and answer.label in labels else None
            if suggested is None:
                why = ("LLM stage abstained" if answer is None
                       else f"LLM answer {answer.label!r} not accepted")
            else:
                verdict = judge(self.llm_rule, suggested.label, suggested.confidence,
                                w.ranked, w.neighbours, target=target,
                                bundle_version=self.bundle.info.version)
                if verdict.accepted:
                    w.decision = self._decision(w, "llm", suggested.label,
                                                suggested.confidence, top_classes=top_classes,
                                                reason=suggested.explanation, cost_usd=cost)
                    continue
                why = verdict.reason
            best = top_classes[0][1] if top_classes else 0.0
            w.decision = self._decision(
                w, "review", None, best, top_classes=top_classes, cost_usd=cost,
                reason=f"no stage confident enough (classifier: {w.reason}); {why}",
                suggestion=suggested.label if suggested else None,
                suggestion_confidence=suggested.confidence if suggested else None,
            )


def get_llm_stage(settings: Settings) -> LLMStage:
    """The OpenAI-compatible stage when ``CCA_LLM_BASE_URL`` is set, else the disabled one."""
    if not settings.llm_base_url:
        return DisabledLLMStage()
    # Deferred: the openai client is a heavy import, needed only when an endpoint is set.
    from cascade.llm_openai import OpenAICompatibleStage

    return OpenAICompatibleStage(settings)
