"""The ticketing loop: the durable intake queue, what was written back, agents' corrections.

``intake_events`` is the queue: a webhook is answered 202 only once its row is committed,
and a vendor's redelivery of the same event hits the unique (source, event_key) and is
stored once. Workers claim rows with ``FOR UPDATE SKIP LOCKED`` under a lease; a worker
killed mid-event leaves its lease to expire and another worker takes the row again.

``writebacks`` holds one row per routed ticket (unique per source and ticket): it is written
*before* the vendor request ('sending') and marked 'sent' after, and the note carries its
marker, so a worker that finds a 'sending' row after a crash asks the vendor whether the
note is there before writing: no decision is written twice.

``corrections`` records an agent's change of the routed field, with what we had written.

Revision ID: 0006
Revises: 0005
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE intake_events (
            id              bigserial PRIMARY KEY,
            source          text NOT NULL,
            event_key       text NOT NULL,
            kind            text NOT NULL CHECK (kind IN ('created', 'updated')),
            event_type      text NOT NULL,
            ticket_id       text NOT NULL,
            ticket_ref      text NOT NULL,
            customer_ref    text,
            payload         jsonb NOT NULL,
            status          text NOT NULL DEFAULT 'pending'
                            CHECK (status IN ('pending', 'processing', 'done', 'dead')),
            attempts        integer NOT NULL DEFAULT 0,
            next_attempt_at timestamptz NOT NULL DEFAULT now(),
            lease_until     timestamptz,
            worker          text,
            outcome         text,
            last_error      text,
            received_at     timestamptz NOT NULL DEFAULT now(),
            done_at         timestamptz,
            UNIQUE (source, event_key)
        )
        """
    )
    op.execute("CREATE INDEX ix_intake_due ON intake_events (next_attempt_at, id) "
               "WHERE status IN ('pending', 'processing')")
    op.execute("CREATE INDEX ix_intake_ticket ON intake_events (source, ticket_ref)")
    op.execute("CREATE INDEX ix_intake_customer ON intake_events (customer_ref)")
    op.execute("CREATE INDEX ix_intake_received ON intake_events (received_at)")
    op.execute(
        """
        CREATE TABLE writebacks (
            id           bigserial PRIMARY KEY,
            event_id     bigint NOT NULL REFERENCES intake_events (id) ON DELETE CASCADE,
            source       text NOT NULL,
            ticket_id    text NOT NULL,
            ticket_ref   text NOT NULL,
            marker       text NOT NULL UNIQUE,
            stage        text NOT NULL,
            label        text,
            department   text,
            confidence   double precision NOT NULL,
            model_version text NOT NULL,
            review       boolean NOT NULL,
            urgency      text NOT NULL,
            group_value  text,
            priority_value text,
            tags         text[] NOT NULL DEFAULT '{}',
            note         text NOT NULL,
            status       text NOT NULL DEFAULT 'sending' CHECK (status IN ('sending', 'sent')),
            created_at   timestamptz NOT NULL DEFAULT now(),
            sent_at      timestamptz,
            UNIQUE (source, ticket_ref)
        )
        """
    )
    op.execute(
        """
        CREATE TABLE corrections (
            id                   bigserial PRIMARY KEY,
            event_id             bigint NOT NULL
                                 REFERENCES intake_events (id) ON DELETE CASCADE,
            writeback_id         bigint NOT NULL REFERENCES writebacks (id) ON DELETE CASCADE,
            source               text NOT NULL,
            ticket_id            text NOT NULL,
            field                text NOT NULL,
            written              text,
            corrected            text,
            actor                text,
            stage                text NOT NULL,
            label                text,
            department           text,
            corrected_label      text,
            corrected_department text,
            at                   timestamptz NOT NULL DEFAULT now(),
            UNIQUE (event_id, field)
        )
        """
    )
    op.execute("CREATE INDEX ix_corrections_stage ON corrections (stage, at)")


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS corrections")
    op.execute("DROP TABLE IF EXISTS writebacks")
    op.execute("DROP TABLE IF EXISTS intake_events")
