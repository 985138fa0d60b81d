"""Serving: who asked for each decision, idempotent replays, shadow runs, erasure tombstones.

Revision ID: 0003
Revises: 0002
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # record_id makes the spool's at-least-once delivery exactly-once in the table.
    op.execute(
        """
        ALTER TABLE decisions
            ADD COLUMN record_id  uuid,
            ADD COLUMN caller     text,
            ADD COLUMN request_id text,
            ADD COLUMN endpoint   text
        """
    )
    op.execute("CREATE UNIQUE INDEX ux_decisions_record ON decisions (record_id)")
    # The latest decision per ticket and request content: what a retried webhook gets back
    # when Redis has forgotten it. Deleted with the ticket (right to deletion).
    op.execute(
        """
        CREATE TABLE served_decisions (
            ticket_id    text PRIMARY KEY REFERENCES tickets (id) ON DELETE CASCADE,
            request_hash text NOT NULL,
            decision     jsonb NOT NULL,
            served_at    timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute(
        """
        CREATE TABLE shadow_decisions (
            id                 bigserial PRIMARY KEY,
            record_id          uuid UNIQUE,
            ticket_id          text NOT NULL REFERENCES tickets (id) ON DELETE CASCADE,
            decided_at         timestamptz NOT NULL DEFAULT now(),
            champion_version   text NOT NULL,
            challenger_version text NOT NULL,
            champion_stage     text NOT NULL,
            challenger_stage   text NOT NULL,
            champion_label     text,
            challenger_label   text,
            champion_conf      double precision NOT NULL,
            challenger_conf    double precision NOT NULL,
            challenger_ms      double precision NOT NULL
        )
        """
    )
    op.execute("CREATE INDEX ix_shadow_ticket ON shadow_decisions (ticket_id)")
    # Right to deletion: the customer's rows go; this anonymised record of the erasure stays.
    op.execute(
        """
        CREATE TABLE erasures (
            id           bigserial PRIMARY KEY,
            at           timestamptz NOT NULL DEFAULT now(),
            subject_hash text NOT NULL,
            actor        text NOT NULL,
            counts       jsonb NOT NULL DEFAULT '{}'::jsonb
        )
        """
    )
    for event in ("UPDATE OR DELETE", "TRUNCATE"):
        level = "STATEMENT" if event == "TRUNCATE" else "ROW"
        name = "erasures_no_truncate" if event == "TRUNCATE" else "erasures_no_update_delete"
        op.execute(f"CREATE TRIGGER {name} BEFORE {event} ON erasures "
                   f"FOR EACH {level} EXECUTE FUNCTION refuse_change()")


def downgrade() -> None:
    for table in ("erasures", "shadow_decisions", "served_decisions"):
        op.execute(f"DROP TABLE IF EXISTS {table}")
    op.execute("DROP INDEX IF EXISTS ux_decisions_record")
    op.execute("ALTER TABLE decisions DROP COLUMN record_id, DROP COLUMN caller, "
               "DROP COLUMN request_id, DROP COLUMN endpoint")
