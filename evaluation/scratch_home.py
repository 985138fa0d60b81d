"""A throwaway CCA_HOME for an experiment that has to train: its own embedded PostgreSQL,
MLflow store, models and rules, removed afterwards even when the experiment fails.

An experiment such as training without some intents must not touch the user's home: not its
tickets, its registry, its champion or its near-duplicate index. Everything a home holds is
under its folder except two things, which are handled here: the embedded server (stopped
before the folder goes) and the near-duplicate index in the shared Redis (its keys carry the
scratch database's own random namespace, and are deleted). The embedding tables the home
derives once (the static MiniLM table, the quantised deep model) are shared between scratch
homes and copied from the user's home when it has them, since deriving them costs minutes.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from pathlib import Path

from cca.errors import read_yaml
from cca.settings import Settings
from cca.store import Database, open_database
from cca.store.dedup_repo import namespace
from cca.store.server import stop_embedded

log = logging.getLogger(__name__)


def shared_embeddings(main: Settings, root: Path) -> Path:
    """One embeddings folder for every scratch home under ``root``, seeded from the user's
    home (read only: copied, never linked, so nothing is written back into it)."""
    target = root / "embeddings"
    source = main.home / "embeddings"
    if not target.exists():
        if source.is_dir():
            shutil.copytree(source, target)
        else:
            target.mkdir(parents=True)
    return target


def rules_without(rules_path: Path, labels: Collection[str], home: Path) -> Path:
    """A copy of the rule file without the route rules of ``labels``: an intent the system
    was never given has no rule either (urgency rules stay)."""
    if not labels:
        return rules_path
    # deferred: PyYAML is needed only when rules are rewritten
    import yaml

    data = read_yaml(rules_path, "a rule file") or {}
    data["rules"] = [r for r in data.get("rules") or []
                     if not (isinstance(r, dict) and r.get("label") in labels)]
    target = home / "rules.yaml"
    target.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True),
                      encoding="utf-8")
    return target


def scratch_settings(main: Settings, home: Path, rules_path: Path) -> Settings:
    """The user's settings with everything that holds state moved into ``home``: the embedded
    database (never CCA_DATABASE_URL), a local MLflow store (never the user's tracking
    server), no inbox of the user's."""
    return main.model_copy(update={
        "home": home.resolve(), "database_url": None, "database_name": "cca",
        "mlflow_tracking_uri": None, "inbox_dir": None, "rules_path": rules_path,
    })


@contextmanager
def scratch_home(main: Settings, home: Path, embeddings: Path,
                 without_rules_for: Collection[str] = ()) -> Iterator[tuple[Settings, Database]]:
    """A new home at ``home`` (which must not exist) and its open database."""
    home.mkdir(parents=True)
    (home / "embeddings").symlink_to(embeddings.resolve(), target_is_directory=True)
    s = scratch_settings(main, home, rules_without(main.rules_path, without_rules_for, home))
    db = open_database(s)
    try:
        yield s, db
    finally:
        close_scratch(s, db)


def close_scratch(s: Settings, db: Database) -> None:
    """Drop the home's Redis keys, close its connections and stop its server; each step runs
    even when one before it failed (the folder is removed by the caller)."""
    try:
        drop_redis_keys(s, db)
    except Exception as exc:  # Redis down: the keys stay, in a namespace nothing reads again
        log.warning("scratch home %s: near-duplicate keys not deleted: %s", s.home, exc)
    finally:
        db.dispose()
        if db.embedded_server is not None:
            db.embedded_server.cleanup()
        else:
            stop_embedded(s)


def drop_redis_keys(s: Settings, db: Database) -> int:
    """Delete the scratch database's near-duplicate index (keys ``cca:lsh:<namespace>:…``)."""
    # deferred: redis is needed only by homes that ran the near-duplicate check
    import redis

    with db.begin() as conn:
        ns = namespace(conn)
    client = redis.Redis.from_url(s.redis_url)
    try:
        keys = list(client.scan_iter(match=f"cca:lsh:{ns}:*", count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start:start + 500])
    finally:
        client.close()
    return len(keys)
