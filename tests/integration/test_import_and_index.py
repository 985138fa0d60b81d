import hashlib
import json

import numpy as np
import pytest
import sqlalchemy as sa

from cca.departments import load_department_map
from cca.embeddings import get_deep_embedder, get_embedder
from cca.errors import InputError
from cca.store.vectors import nearest
from pipelines import lifecycle
from pipelines.import_tickets import import_parsed
from pipelines.index_tickets import index_labelled_tickets
from pipelines.read_tickets import Columns, read_ticket_file
from tests.conftest import FIXTURES

COLS = Columns(text="message", label="intent", id="ticket_id", subject="subject",
               priority="priority")


def count(db, table: str) -> int:
    with db.begin() as conn:
        return conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar()


def load(settings, path=FIXTURES / "service_desk.csv"):
    return read_ticket_file(path, COLS), load_department_map(settings.department_map)


def test_import_is_idempotent_and_tracks_changes(settings, clean_db, tmp_path):
    parsed, depts = load(settings)
    first = import_parsed(clean_db, parsed, depts)
    assert (first.inserted, first.labelled) == (48, 48)
    again = import_parsed(clean_db, parsed, depts)
    assert (again.inserted, again.updated, again.unchanged) == (0, 0, 48)
    changed = tmp_path / "changed.csv"
    changed.write_text((FIXTURES / "service_desk.csv").read_text().replace(
        "My order has not arrived yet", "My order has still not arrived"))
    report = import_parsed(clean_db, read_ticket_file(changed, COLS), depts)
    assert (report.inserted, report.updated, report.unchanged) == (0, 1, 47)
    with clean_db.begin() as conn:
        dept = conn.execute(sa.text(
            "SELECT department FROM ticket_labels WHERE ticket_id = 'SD-013'")).scalar()
    assert dept == "Finance"


def test_bad_file_writes_nothing(settings, clean_db, tmp_path):
    bad = tmp_path / "bad.csv"
    lines = (FIXTURES / "service_desk.csv").read_text().splitlines()
    lines.insert(30, "SD-999,,   ,billing_question,normal")  # whitespace-only text
    bad.write_text("\n".join(lines) + "\n")
    parsed, depts = load(settings, bad)
    with pytest.raises(InputError, match=r"line 31: empty or missing text.*nothing imported"):
        import_parsed(clean_db, parsed, depts)
    assert count(clean_db, "tickets") == 0
    report = import_parsed(clean_db, parsed, depts, strict=False)
    assert report.inserted == 48 and len(report.rejected) == 1


def test_label_outside_department_map_writes_nothing(settings, clean_db, tmp_path):
    extra = tmp_path / "extra.csv"
    extra.write_text((FIXTURES / "service_desk.csv").read_text()
                     + "SD-100,,I want a refund,refunds,normal\n")
    parsed, depts = load(settings, extra)
    with pytest.raises(Exception, match="in no department: refunds"):
        import_parsed(clean_db, parsed, depts)
    assert count(clean_db, "tickets") == 0


def test_index_embeds_only_new_or_changed_and_finds_neighbours(settings, clean_db):
    parsed, depts = load(settings)
    import_parsed(clean_db, parsed, depts)
    assert index_labelled_tickets(clean_db, get_embedder(settings)).considered == 0
    for step in (lifecycle.sanitize_pending, lifecycle.dedup_pending, lifecycle.validate_pending):
        step(settings, clean_db)  # only redacted, checked tickets reach the index
    embedder = get_embedder(settings)
    first = index_labelled_tickets(clean_db, embedder)
    assert (first.considered, first.embedded) == (48, 48)
    assert index_labelled_tickets(clean_db, embedder).embedded == 0
    with clean_db.begin() as conn:
        conn.execute(sa.text(
            "UPDATE ticket_labels SET label = 'billing_question', department = 'Finance' "
            "WHERE ticket_id = 'SD-001'"))
    relabel = index_labelled_tickets(clean_db, embedder)
    assert (relabel.embedded, relabel.relabelled) == (0, 1)

    query = embedder.embed(["Where is my package? Tracking has not moved for a week"])
    with clean_db.begin() as conn:
        found = nearest(conn, embedder.model_id, query, k=3)[0]
        excluded = nearest(conn, embedder.model_id, query, k=3, exclude_ids=["SD-027"])[0]
        # With 48 rows the planner rightly prefers scan + sort; discourage those to prove the
        # partial HNSW expression index matches the query shape the cache uses.
        for knob in ("enable_seqscan", "enable_bitmapscan", "enable_sort"):
            conn.execute(sa.text(f"SET LOCAL {knob} = off"))
        plan = "\n".join(conn.execute(sa.text(
            "EXPLAIN SELECT ticket_id FROM ticket_embeddings "
            f"WHERE model_id = '{embedder.model_id}' AND label IS NOT NULL "
            "ORDER BY embedding::vector(384) <=> CAST(:q AS vector(384)) LIMIT 3"),
            {"q": "[" + ",".join(["0.1"] * 384) + "]"}).scalars())
    assert found[0].ticket_id == "SD-027" and found[0].similarity > 0.99
    assert found[0].label == "delivery_delay"
    assert all(n.ticket_id != "SD-027" for n in excluded)
    assert [n.similarity for n in found] == sorted((n.similarity for n in found), reverse=True)
    assert "Index Scan using ix_emb_hnsw_" in plan


@pytest.mark.parametrize("which", ["cache", "deep"])
def test_embeddings_are_normalised_deterministic_and_semantic(settings, which):
    embedder = get_embedder(settings) if which == "cache" else get_deep_embedder(settings)
    a = embedder.embed(["card not arrived", "reset my password please"] * 3)
    b = embedder.embed(["reset my password please"])
    assert a.shape == (6, 384)
    assert np.allclose(np.linalg.norm(a, axis=1), 1, atol=1e-5)
    assert np.allclose(a[1], b[0], atol=1e-5)
    near, far = embedder.embed(["my new card has not been delivered", "what is the weather"])
    assert float(a[0] @ near) > float(a[0] @ far) + 0.1


def test_static_table_is_cached_and_verified(settings):
    from cca.embeddings import OnnxMiniLM
    from cca.static_embeddings import StaticMiniLM

    get_embedder(settings)  # distils once into CCA_HOME/embeddings
    cached = settings.home / "embeddings" / "minilm-static-v2.npy"
    assert cached.exists() and cached.with_suffix(".json").exists()
    teacher = OnnxMiniLM()
    reloaded = StaticMiniLM(settings.home / "embeddings", teacher)
    assert reloaded.table.shape == (30522, 384)


def test_quantised_deep_tier_is_derived_once_checked_and_close(settings):
    """The dq8 deep tier: derived from the installed model under CCA_HOME, reused while it
    matches its recorded hash, re-derived when not, and near the packaged model's vectors."""
    from cca.embeddings import OnnxMiniLM

    deep = get_deep_embedder(settings)
    assert deep.model_id == "all-MiniLM-L6-v2-onnx-dq8-v1"
    model = settings.home / "embeddings" / "minilm-dq8-v1.onnx"
    meta = json.loads(model.with_suffix(".json").read_text())
    assert meta["source_sha256"] == OnnxMiniLM.SHA256
    assert meta["sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
    built = model.stat().st_mtime_ns
    texts = ["my card was charged twice", "the app will not let me log in",
             "how long does a transfer from abroad take", "I want to close my account"]
    OnnxMiniLM(quantized_dir=model.parent)  # matches its hash: reused, not derived again
    assert model.stat().st_mtime_ns == built
    packaged = OnnxMiniLM().embed(texts)
    cosine = np.sum(deep.embed(texts) * packaged, axis=1)
    assert cosine.min() > 0.97 and cosine.mean() > 0.985
    with model.open("r+b") as f:  # a damaged file is derived again, never loaded
        f.seek(1000)
        f.write(b"\0" * 64)
    again = OnnxMiniLM(quantized_dir=model.parent)
    assert hashlib.sha256(model.read_bytes()).hexdigest() == meta["sha256"]
    np.testing.assert_allclose(again.embed(texts), deep.embed(texts), atol=1e-6)
