"""What ingest has already taken in: inbox files by content hash, and each connector's cursor."""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection


@dataclass(frozen=True)
class IngestedFile:
    sha256: str
    name: str
    source: str
    tickets: int
    quarantined: int


def file_ingested(conn: Connection, sha256: str) -> bool:
    """Whether a file with this content was ingested before (under any name)."""
    return conn.execute(sa.text("SELECT 1 FROM ingested_files WHERE sha256 = :h"),
                        {"h": sha256}).first() is not None


def record_file(conn: Connection, file: IngestedFile) -> None:
    """Remember a file, in the same commit as its tickets: a retried run then skips it."""
    conn.execute(
        sa.text("INSERT INTO ingested_files (sha256, name, source, tickets, quarantined) "
                "VALUES (:h, :n, :s, :t, :q) ON CONFLICT DO NOTHING"),
        {"h": file.sha256, "n": file.name, "s": file.source, "t": file.tickets,
         "q": file.quarantined},
    )


def get_cursor(conn: Connection, connector: str) -> str | None:
    """Where the connector's last fetch ended; None before its first."""
    return conn.execute(sa.text("SELECT cursor FROM ingest_cursors WHERE connector = :c"),
                        {"c": connector}).scalar()


def set_cursor(conn: Connection, connector: str, cursor: str) -> None:
    conn.execute(
        sa.text("INSERT INTO ingest_cursors (connector, cursor) VALUES (:c, :v) "
                "ON CONFLICT (connector) DO UPDATE SET cursor = EXCLUDED.cursor, "
                "updated_at = now()"),
        {"c": connector, "v": cursor},
    )
