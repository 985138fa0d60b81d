"""The BentoML service: the cascade over HTTP, secured, audited and measured.

``cca serve`` runs ``bentoml serve serving.service:CallCentreAgent``. The HTTP API is a
FastAPI app mounted on the service (BentoML's documented way to own authentication and error
shapes); BentoML itself serves ``/healthz``, ``/readyz`` (ready once the champion is loaded)
and ``/metrics`` (its own metrics plus ``serving.metrics``). OpenAPI: ``/openapi.json``,
browsable at ``/api-docs``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import math
import os
import sys
from typing import Annotated

import bentoml
from fastapi import Depends, FastAPI, Path, Request
from pydantic import ValidationError

from cca import __version__
from cca.errors import CCAError, InputError, UnknownTicket
from cca.settings import Settings
from cca.tickets import Ticket
from serving.auth import Authenticator, AuthError, Caller
from serving.batch import Job, Pending, Served, audit_fsyncs
from serving.batcher import MicroBatcher
from serving.connection_balance import ConnectionBalancer
from serving.http_guard import (
    GuardMiddleware,
    ServiceError,
    StrictJSONRoute,
    install_error_handlers,
)
from serving.intake import queue_status
from serving.logs import configure, request_id
from serving.metrics import ServiceMetrics
from serving.runtime import Runtime
from serving.schemas import (
    BatchRequest,
    BatchResponse,
    ClassifyRequest,
    ClassifyResponse,
    DecisionOut,
    ErasureRequest,
    ErasureResponse,
    ErrorOut,
    ExplainRequest,
    ExplainResponse,
    ExplanationOut,
    ExplanationsResponse,
    FeedbackRequest,
    FeedbackResponse,
)
from serving.webhooks_api import router as webhooks_router

log = logging.getLogger("cca.serving")
# Each worker is a process with its share of the cores: on the service's small batches the
# tokenizers' own thread pool costs more CPU than it saves (docs/ARCHITECTURE.md). An
# operator's explicit setting wins.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
_settings = Settings()
_metrics = ServiceMetrics()

app = FastAPI(
    title="Call Centre Agent",
    version=__version__,
    description="Classify and route service-desk tickets through a cheap, explainable cascade "
    "(rules, vector cache, classifier, LLM, human review). Every endpoint but the probes "
    "needs a bearer JWT with the scope named in its description.",
    docs_url="/api-docs",
    redoc_url=None,
    responses={400: {"model": ErrorOut}, 401: {"model": ErrorOut}, 403: {"model": ErrorOut},
               404: {"model": ErrorOut}, 405: {"model": ErrorOut}, 413: {"model": ErrorOut},
               415: {"model": ErrorOut}, 422: {"model": ErrorOut}, 429: {"model": ErrorOut}},
)
app.router.route_class = StrictJSONRoute
install_error_handlers(app)


def _caller(scope: str):
    # Async, so a request does not pay a hop to the thread pool: a recently verified token and
    # the rate limiter's Redis call (breaker-guarded, one short timeout at worst) run on the
    # event loop; only a token not seen lately is verified on a thread (an RS256 key fetch
    # may block).
    async def dependency(request: Request) -> Caller:
        service = _service()
        header = request.headers.get("authorization")
        try:
            caller = (service.auth.cached(header, scope)
                      or await asyncio.to_thread(service.auth.authenticate, header, scope))
        except AuthError as exc:
            raise ServiceError(exc.status_code, exc.message, exc.headers) from exc
        allowed, retry_after = service.limiter.check(caller.client_id)
        if not allowed:
            _metrics.rate_limited.inc()
            wait = max(1, math.ceil(retry_after))
            raise ServiceError(429, f"rate limit exceeded for client {caller.client_id!r}: "
                               f"retry in {wait} s", {"Retry-After": str(wait)})
        return caller

    return dependency


def _tickets(items: list) -> list[Ticket]:
    out = []
    for i, item in enumerate(items):
        try:
            out.append(item.to_ticket())
        except (ValueError, ValidationError) as exc:
            msg = exc.errors()[0]["msg"] if isinstance(exc, ValidationError) else str(exc)
            where = f"tickets[{i}] (id {item.id!r})" if len(items) > 1 else f"ticket {item.id!r}"
            raise ServiceError(422, f"{where}: {msg}") from exc
    return out


def _service() -> CallCentreAgent:
    return bentoml.get_current_service()


async def _serve(items: list, caller: Caller, endpoint: str) -> list[Served]:
    tickets = _tickets(items)
    jobs = [Job(t, caller.subject, request_id.get(), endpoint) for t in tickets]
    results = await _service().batcher.submit(jobs)
    out = []
    for r in results:  # tickets that went to the LLM finish on their own threads
        if isinstance(r, Pending):
            done = (await asyncio.wrap_future(r.future))[r.index]
            r = Served(done.decision, True, done.durable) if r.replayed else done
        out.append(r)
    # Answered only once audited: the spool's fsync ran while the cascade went on. Shielded:
    # a request cancelled by its timeout must not cancel an fsync other requests share.
    for durable in audit_fsyncs(out):
        if not durable.done():
            with contextlib.suppress(Exception):
                await asyncio.shield(asyncio.wrap_future(durable))
        if durable.cancelled() or durable.exception() is not None:
            error = "cancelled" if durable.cancelled() else type(durable.exception()).__name__
            log.error("audit record not written", extra={"error": error})
            raise ServiceError(503, "the audit log could not be written, so the decision is "
                               "not given; try again")
    return out


@app.post("/classify", response_model=ClassifyResponse, tags=["classify"],
          summary="Route one ticket (scope: classify)")
async def classify(body: ClassifyRequest,
                   caller: Annotated[Caller, Depends(_caller("classify"))]
                   ) -> ClassifyResponse:
    """The same ticket id with the same content returns the stored decision
    (``replayed: true``): a retried webhook never routes a ticket twice."""
    (served,) = await _serve([body.ticket], caller, "classify")
    return ClassifyResponse(decision=_out(served), request_id=request_id.get())


@app.post("/batch_classify", response_model=BatchResponse, tags=["classify"],
          summary="Route up to CCA_SERVE_MAX_BATCH tickets (scope: classify)")
async def batch_classify(body: BatchRequest,
                         caller: Annotated[Caller, Depends(_caller("classify"))]
                         ) -> BatchResponse:
    if len(body.tickets) > _service().settings.serve_max_batch:
        raise ServiceError(413, f"{len(body.tickets)} tickets in one batch; the limit is "
                           f"{_service().settings.serve_max_batch}")
    ids = [t.id for t in body.tickets]
    if len(set(ids)) != len(ids):
        raise ServiceError(422, "ticket ids repeat within the batch")
    served = await _serve(body.tickets, caller, "batch_classify")
    return BatchResponse(decisions=[_out(s) for s in served], request_id=request_id.get())


@app.post("/explain", response_model=ExplainResponse, tags=["classify"],
          summary="Route one ticket and say why (scope: classify)")
async def explain(body: ExplainRequest,
                  caller: Annotated[Caller, Depends(_caller("classify"))]
                  ) -> ExplainResponse:
    """The stage that answered and its evidence: the rule, the neighbours from the vector
    cache, the classifier's top classes with probabilities, the LLM's explanation. With
    ``llm_explanation: true`` the LLM also explains a decision an earlier stage made, after
    the answer (``GET /explanations/{ticket_id}``)."""
    (served,) = await _serve([body.ticket], caller, "explain")
    out = ExplanationOut.explain(served.decision, served.replayed)
    if body.llm_explanation and out.llm_explanation_status != "included":
        out.llm_explanation_status = _service().runtime.explainer.submit(
            body.ticket.to_ticket(), served.decision)
    return ExplainResponse(explanation=out, request_id=request_id.get())


@app.get("/explanations/{ticket_id}", response_model=ExplanationsResponse, tags=["classify"],
         summary="LLM explanations written after the answer (scope: classify)")
async def explanations(ticket_id: Annotated[str, Path(min_length=1, max_length=200)],
                       caller: Annotated[Caller, Depends(_caller("classify"))]
                       ) -> ExplanationsResponse:
    rows = await asyncio.to_thread(_service().runtime.explanations, ticket_id)
    return ExplanationsResponse(ticket_id=ticket_id, explanations=rows,
                                request_id=request_id.get())


@app.post("/feedback", response_model=FeedbackResponse, tags=["learn"],
          summary="A validated label for a served ticket (scope: feedback)",
          responses={404: {"model": ErrorOut}, 503: {"model": ErrorOut}})
async def feedback(body: FeedbackRequest,
                   caller: Annotated[Caller, Depends(_caller("feedback"))]
                   ) -> FeedbackResponse:
    """Stored, added to the vector index, and scored against the cache's earlier answer
    (its per-label track record decides whether the cache may answer again)."""
    try:
        message = await asyncio.to_thread(_service().runtime.feedback, body.ticket_id,
                                          body.label, caller.subject)
    except InputError as exc:
        status = 404 if isinstance(exc, UnknownTicket) else 422
        raise ServiceError(status, str(exc)) from exc
    except CCAError as exc:
        raise ServiceError(503, str(exc)) from exc
    return FeedbackResponse(ticket_id=body.ticket_id, label=body.label.strip(),
                            message=message, request_id=request_id.get())


@app.post("/customers/erase", response_model=ErasureResponse, tags=["privacy"],
          summary="Right to deletion (scope: admin)",
          responses={503: {"model": ErrorOut}})
async def erase(body: ErasureRequest,
                caller: Annotated[Caller, Depends(_caller("admin"))]) -> ErasureResponse:
    """Deletes the customer's tickets, labels, embeddings, replay records, shadow runs,
    Redis keys and raw text; the audit keeps its rows (ids and hashes only) and gains an
    anonymised tombstone (a keyed hash of the reference, counts, who, when)."""
    try:
        counts = await asyncio.to_thread(_service().runtime.engine.erase, body.customer_ref,
                                         caller.subject)
    except ValueError as exc:
        raise ServiceError(422, str(exc)) from exc
    except CCAError as exc:
        raise ServiceError(503, str(exc)) from exc
    return ErasureResponse(counts=counts, request_id=request_id.get())


@app.get("/status", tags=["operate"], summary="Components and models (scope: admin)")
async def status(caller: Annotated[Caller, Depends(_caller("admin"))]) -> dict:
    return _service().runtime.status()


app.include_router(webhooks_router)


@bentoml.service(
    name="call-centre-agent",
    workers=_settings.serve_workers,
    traffic={"timeout": 60, "max_concurrency": 512},
    http={"port": _settings.serve_port, "host": _settings.serve_host},
    metrics={"enabled": True, "namespace": "bentoml_service"},
    # serving.http_guard writes the access log as JSON with the request id.
    logging={"access": {"enabled": False}},
    # BentoML records an OpenTelemetry span per request even when it samples none, a real
    # share of the event loop's time under load (docs/ARCHITECTURE.md). Off unless
    # CCA_SERVE_TRACING (then BentoML's own tracing configuration applies).
    **({} if _settings.serve_tracing else {"tracing": {"excluded_urls": [".*"]}}),
)
@bentoml.asgi_app(app, path="/")
class CallCentreAgent:
    def __init__(self) -> None:
        configure()
        self.settings = Settings()
        self.runtime = Runtime.start(self.settings, _metrics)
        self.auth = Authenticator(self.settings)
        self.limiter = self.runtime.limiter
        self.batcher: MicroBatcher[Job, Served | Pending] = MicroBatcher(
            self.runtime.engine.handle, self.settings.serve_batch_max_size,
            self.settings.serve_batch_wait_ms / 1000)
        # What is loaded now (models, vocabularies, spaCy: hundreds of thousands of objects)
        # lives as long as the worker. Frozen, the cyclic collector no longer walks it: a full
        # collection over it holds the interpreter lock, and so every request of this worker,
        # for a long pause (docs/ARCHITECTURE.md, "Serving").
        self.runtime.start_intake(self.batcher.run_sync, self.settings.intake_workers)
        gc.collect()
        gc.freeze()
        # The event loop gets the interpreter lock back sooner from the cascade's threads.
        self._switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(self.settings.serve_gil_switch_ms / 1000)

    def __is_ready__(self) -> bool:
        return self.runtime.ready

    def __metrics__(self, content: str) -> str:
        self.runtime.refresh_gauges()
        if self.runtime.intake is not None:  # queue depth, oldest event, dead letters
            queue_status(self.runtime.db, _metrics)
        return content + _metrics.render()

    @bentoml.on_shutdown
    async def shutdown(self) -> None:
        try:
            await self.batcher.aclose()
            await asyncio.to_thread(self.runtime.close)
        finally:
            gc.unfreeze()  # a process that goes on (the tests' in-process service) frees it
            sys.setswitchinterval(self._switch_interval)


# Around BentoML's whole app, so its own routes and its 404s get the same treatment.
CallCentreAgent.add_asgi_middleware(
    GuardMiddleware, max_body=_settings.serve_max_body_bytes, metrics=_metrics,
    balancer=ConnectionBalancer(_settings.serve_max_requests_per_connection,
                                _settings.home / "serve", _settings.serve_workers))


def _out(served: Served):
    return DecisionOut.of(served.decision, served.replayed)
