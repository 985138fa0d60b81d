"""Data lifecycle: redacted text, near-duplicate links, quarantine, ingest state, model events.

Revision ID: 0002
Revises: 0001
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Redacted text lives beside the raw text: retention purges the raw text, the redacted
    # text is what gets embedded, indexed, sent to an LLM or logged.
    op.execute(
        """
        ALTER TABLE tickets
            ADD COLUMN clean_subject  text,
            ADD COLUMN clean_body     text,
            ADD COLUMN clean_hash     text,
            ADD COLUMN sanitized_for  text,
            ADD COLUMN pii_found      jsonb NOT NULL DEFAULT '{}'::jsonb,
            ADD COLUMN duplicate_of   text REFERENCES tickets (id) ON DELETE SET NULL,
            ADD COLUMN dedup_for      text,
            ADD COLUMN checked_for    text,
            ADD COLUMN raw_purged_at  timestamptz
        """
    )
    op.execute("CREATE INDEX ix_tickets_unsanitized ON tickets (id) "
               "WHERE sanitized_for IS DISTINCT FROM content_hash")
    op.execute("CREATE INDEX ix_tickets_created ON tickets (created_at)")
    op.execute("CREATE INDEX ix_tickets_duplicate_of ON tickets (duplicate_of)")
    # MinHash signatures are the durable record; the LSH index in Redis is rebuilt from them.
    op.execute(
        """
        CREATE TABLE ticket_minhash (
            ticket_id   text PRIMARY KEY REFERENCES tickets (id) ON DELETE CASCADE,
            params      text NOT NULL,
            clean_hash  text NOT NULL,
            signature   bytea NOT NULL,
            created_at  timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute(
        """
        CREATE TABLE quarantine (
            id             bigserial PRIMARY KEY,
            quarantined_at timestamptz NOT NULL DEFAULT now(),
            stage          text NOT NULL,
            source         text NOT NULL,
            location       text NOT NULL,
            reason         text NOT NULL,
            payload        jsonb NOT NULL DEFAULT '{}'::jsonb,
            released_at    timestamptz
        )
        """
    )
    op.execute("CREATE INDEX ix_quarantine_open ON quarantine (quarantined_at) "
               "WHERE released_at IS NULL")
    op.execute(
        """
        CREATE TABLE ingested_files (
            sha256      text PRIMARY KEY,
            name        text NOT NULL,
            source      text NOT NULL,
            ingested_at timestamptz NOT NULL DEFAULT now(),
            tickets     integer NOT NULL,
            quarantined integer NOT NULL
        )
        """
    )
    op.execute(
        """
        CREATE TABLE ingest_cursors (
            connector  text PRIMARY KEY,
            cursor     text NOT NULL,
            updated_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    # Who registered, promoted or rolled back which model, and why; kept like the audit log.
    op.execute(
        """
        CREATE TABLE model_events (
            id        bigserial PRIMARY KEY,
            at        timestamptz NOT NULL DEFAULT now(),
            action    text NOT NULL,
            model     text NOT NULL,
            version   text,
            actor     text NOT NULL,
            reason    text NOT NULL DEFAULT '',
            details   jsonb NOT NULL DEFAULT '{}'::jsonb
        )
        """
    )
    op.execute(
        """
        CREATE FUNCTION refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP;
        END $$
        """
    )
    op.execute(
        """
        CREATE TRIGGER model_events_no_update_delete
        BEFORE UPDATE OR DELETE ON model_events
        FOR EACH ROW EXECUTE FUNCTION refuse_change()
        """
    )
    op.execute(
        """
        CREATE TRIGGER model_events_no_truncate
        BEFORE TRUNCATE ON model_events
        FOR EACH STATEMENT EXECUTE FUNCTION refuse_change()
        """
    )


def downgrade() -> None:
    for table in ("model_events", "ingest_cursors", "ingested_files", "quarantine",
                  "ticket_minhash"):
        op.execute(f"DROP TABLE IF EXISTS {table}")
    op.execute("DROP FUNCTION IF EXISTS refuse_change()")
    op.execute(
        """
        ALTER TABLE tickets
            DROP COLUMN clean_subject, DROP COLUMN clean_body, DROP COLUMN clean_hash,
            DROP COLUMN sanitized_for, DROP COLUMN pii_found, DROP COLUMN duplicate_of,
            DROP COLUMN dedup_for, DROP COLUMN checked_for, DROP COLUMN raw_purged_at
        """
    )
