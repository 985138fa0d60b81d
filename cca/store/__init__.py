"""PostgreSQL + pgvector: the system of record for tickets, labels, vectors and decisions."""

from cca.store.database import (
    Database,
    RecordRefused,
    StoreUnavailable,
    exclusive,
    open_database,
    use_database,
)

__all__ = ["Database", "RecordRefused", "StoreUnavailable", "exclusive", "open_database",
           "use_database"]
