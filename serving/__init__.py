"""The cascade over HTTP: a BentoML service with auth, idempotency, rate limits and audit."""

from __future__ import annotations


def worker_index() -> int | None:
    """This BentoML worker's index (1-based); None outside a BentoML server (tests through
    ``to_asgi``, scripts)."""
    try:
        from bentoml._internal.context import server_context

        return int(server_context.worker_index) if server_context.worker_index else None
    except Exception:
        return None
