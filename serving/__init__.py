"""The cascade over HTTP: a BentoML service with auth, idempotency, rate limits and audit."""
