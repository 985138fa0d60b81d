"""The cascade over HTTP: a BentoML service with auth, idempotency, rate limits and audit."""

from __future__ import annotations


def worker_index() -> int | None:
    """This BentoML worker's index (1-based); None outside a BentoML server (tests through
    ``to_asgi``, scripts)."""
    try:
        # Deferred: bentoml is a heavy import, and every ``serving`` module runs this package's
        # ``__init__`` (``cca token`` imports ``serving.auth`` and never serves).
        from bentoml._internal.context import server_context

        return int(server_context.worker_index) if server_context.worker_index else None
    except Exception:
        return None
