"""``cca token``: mint a short-lived HS256 bearer token for the HTTP service (dev and scripts).

The token is the last line on stdout and nothing else is, so ``TOKEN=$(cca token ...)`` works;
the human summary goes to stderr.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

import typer

from cli.common import console, settings


def _check_scopes(values: list[str]) -> list[str]:
    # deferred: PyJWT, cryptography and Redis load only for `cca token`
    from serving.auth import SCOPES

    bad = [v for v in values if v not in SCOPES]
    if bad:
        raise typer.BadParameter(f"{', '.join(bad)} (choose from {', '.join(SCOPES)})")
    return values


def token_cmd(
    scope: Annotated[list[str], typer.Option(
        "--scope", help="Scope to grant: classify, feedback or admin (all). Repeatable.",
        callback=_check_scopes)],
    subject: Annotated[str, typer.Option(help="Who the token is for (the 'sub' claim).")] = "dev",
    ttl: Annotated[int, typer.Option(help="Lifetime in seconds (60..CCA_AUTH_MAX_TTL_S).")] = 3600,
) -> None:
    """Print a bearer token signed with this home's HS256 secret (RS256: ask your IdP)."""
    # deferred: PyJWT, cryptography and Redis load only for `cca token`
    from serving.auth import mint_token

    s = settings()
    if not 60 <= ttl <= s.auth_max_ttl_s:
        raise typer.BadParameter(f"must be 60..{s.auth_max_ttl_s} seconds", param_hint="--ttl")
    if not subject.strip():
        raise typer.BadParameter("must not be empty", param_hint="--subject")
    token = mint_token(s, scope, subject=subject, ttl_s=ttl)
    expires = (datetime.now(UTC) + timedelta(seconds=ttl)).strftime("%Y-%m-%d %H:%M:%S UTC")
    console.print(f"token for {subject!r}, scopes {' '.join(dict.fromkeys(scope))}, "
                  f"expires {expires} ({ttl}s)", highlight=False, markup=False, soft_wrap=True)
    print(token, flush=True)
