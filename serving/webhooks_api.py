"""``POST /webhooks/{source}``: vendors' signed webhooks, answered once stored durably.

No bearer token: the vendor's HMAC signature over the raw body is the credential, so the
body is read raw and verified before anything parses it (``serving.intake``). Answers:
202 stored (or already stored: a redelivery), 401 bad signature or stale timestamp, 404 a
source whose secret is not configured, 413 over 1 MB, 400/422 a body that cannot be an
event, 503 with ``Retry-After`` when the queue is full or PostgreSQL is down.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

import bentoml
from fastapi import APIRouter, Path, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from pipelines.integrations.events import WebhookRejected
from serving.http_guard import ServiceError
from serving.logs import request_id
from serving.schemas import ErrorOut

SOURCES = ("zendesk", "jira", "servicenow")
_RETRY_AFTER_S = 30

router = APIRouter(tags=["integrations"])


class WebhookAccepted(BaseModel):
    stored: int
    duplicates: int
    ignored: int
    request_id: str


@router.post(
    "/webhooks/{source}", status_code=202, response_model=WebhookAccepted,
    summary="A ticketing system's signed webhook (zendesk, jira, servicenow)",
    responses={401: {"model": ErrorOut}, 404: {"model": ErrorOut}, 413: {"model": ErrorOut},
               503: {"model": ErrorOut}})
async def webhook(source: Annotated[str, Path(max_length=40)],
                  request: Request) -> JSONResponse:
    """Signed as each vendor documents it (docs/integrations/); ``stored`` counts new
    events, ``duplicates`` redeliveries already stored, ``ignored`` event types the product
    does not act on. A 202 means the event is in PostgreSQL and will be handled."""
    service = bentoml.get_current_service()
    metrics = service.runtime.metrics
    label = source if source in SOURCES else "unknown"
    intake = service.runtime.intake
    try:
        if intake is None or source not in SOURCES:
            raise WebhookRejected(404, f"no webhook for {source!r} is configured"
                                  + (f": set CCA_{source.upper()}_WEBHOOK_SECRET"
                                     if source in SOURCES else ""))
        body = await request.body()
        headers = {k.lower(): v for k, v in request.headers.items()}
        accepted = await asyncio.to_thread(intake.accept, source, headers, body)
    except WebhookRejected as exc:
        metrics.webhooks.labels(label, f"refused_{exc.status}").inc()
        retry = {"Retry-After": str(_RETRY_AFTER_S)} if exc.status == 503 else None
        raise ServiceError(exc.status, exc.message, retry) from None
    for outcome, n in (("accepted", accepted.stored), ("duplicate", accepted.duplicates),
                       ("ignored", accepted.ignored)):
        if n:
            metrics.webhooks.labels(label, outcome).inc(n)
    out = WebhookAccepted(stored=accepted.stored, duplicates=accepted.duplicates,
                          ignored=accepted.ignored, request_id=request_id.get())
    return JSONResponse(out.model_dump(), status_code=202)
