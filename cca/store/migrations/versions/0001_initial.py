"""Tickets, labels, vectors, the append-only decision audit and the cache's track record.

Revision ID: 0001
Revises:
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE EXTENSION IF NOT EXISTS vector")
    op.execute(
        """
        CREATE TABLE tickets (
            id            text PRIMARY KEY,
            source        text NOT NULL,
            subject       text NOT NULL DEFAULT '',
            body          text NOT NULL,
            customer_ref  text,
            created_at    timestamptz NOT NULL,
            priority      text NOT NULL DEFAULT 'normal',
            metadata      jsonb NOT NULL DEFAULT '{}'::jsonb,
            content_hash  text NOT NULL,
            ingested_at   timestamptz NOT NULL DEFAULT now(),
            updated_at    timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute("CREATE INDEX ix_tickets_source ON tickets (source)")
    op.execute("CREATE INDEX ix_tickets_customer ON tickets (customer_ref)")
    op.execute(
        """
        CREATE TABLE ticket_labels (
            ticket_id   text PRIMARY KEY REFERENCES tickets (id) ON DELETE CASCADE,
            label       text NOT NULL,
            department  text NOT NULL,
            validated   boolean NOT NULL DEFAULT true,
            origin      text NOT NULL,
            labelled_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute("CREATE INDEX ix_ticket_labels_label ON ticket_labels (label)")
    # The vector column has no fixed dimension so several embedding models can coexist;
    # each model gets its own partial HNSW expression index (see cca.store.vectors).
    op.execute(
        """
        CREATE TABLE ticket_embeddings (
            ticket_id    text NOT NULL REFERENCES tickets (id) ON DELETE CASCADE,
            model_id     text NOT NULL,
            embedding    vector NOT NULL,
            content_hash text NOT NULL,
            label        text,
            department   text,
            source       text NOT NULL,
            validated    boolean NOT NULL DEFAULT false,
            created_at   timestamptz NOT NULL,
            indexed_at   timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (ticket_id, model_id)
        )
        """
    )
    op.execute(
        """
        CREATE TABLE decisions (
            id            bigserial PRIMARY KEY,
            ticket_id     text NOT NULL,
            decided_at    timestamptz NOT NULL DEFAULT now(),
            text_hash     text NOT NULL,
            stage         text NOT NULL,
            label         text,
            department    text,
            urgency       text NOT NULL,
            confidence    double precision NOT NULL,
            model_version text NOT NULL,
            cost_usd      double precision NOT NULL DEFAULT 0,
            latency_ms    double precision NOT NULL,
            details       jsonb NOT NULL DEFAULT '{}'::jsonb
        )
        """
    )
    op.execute("CREATE INDEX ix_decisions_ticket ON decisions (ticket_id, decided_at DESC)")
    op.execute(
        """
        CREATE FUNCTION decisions_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'decisions is append-only: % refused', TG_OP;
        END $$
        """
    )
    op.execute(
        """
        CREATE TRIGGER decisions_no_update_delete
        BEFORE UPDATE OR DELETE ON decisions
        FOR EACH ROW EXECUTE FUNCTION decisions_append_only()
        """
    )
    op.execute(
        """
        CREATE TRIGGER decisions_no_truncate
        BEFORE TRUNCATE ON decisions
        FOR EACH STATEMENT EXECUTE FUNCTION decisions_append_only()
        """
    )
    # Per-label reliability of the cache: seeded by a leave-one-out pass at training time,
    # then moved by validated feedback on the cache's own answers.
    op.execute(
        """
        CREATE TABLE cache_track_record (
            model_id       text NOT NULL,
            label          text NOT NULL,
            seed_reuses    integer NOT NULL DEFAULT 0,
            seed_confirmed integer NOT NULL DEFAULT 0,
            fb_reuses      integer NOT NULL DEFAULT 0,
            fb_confirmed   integer NOT NULL DEFAULT 0,
            updated_at     timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (model_id, label)
        )
        """
    )


def downgrade() -> None:
    for table in ("cache_track_record", "decisions", "ticket_embeddings", "ticket_labels",
                  "tickets"):
        op.execute(f"DROP TABLE IF EXISTS {table}")
    op.execute("DROP FUNCTION IF EXISTS decisions_append_only()")
