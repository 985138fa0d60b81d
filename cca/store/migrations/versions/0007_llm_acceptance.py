"""LLM acceptance rules: which answers of an endpoint and model may route a ticket.

One row per ``cca llm calibrate`` run; the newest per (endpoint, model) is in force. Rows are
never changed (UPDATE refused), so the history of what an endpoint was measured at stays.

Revision ID: 0007
Revises: 0006
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE llm_acceptance_rules (
            id                bigserial PRIMARY KEY,
            endpoint          text NOT NULL,
            model             text NOT NULL,
            created_at        timestamptz NOT NULL DEFAULT clock_timestamp(),
            bundle_version    text NOT NULL,
            sample_size       integer NOT NULL CHECK (sample_size >= 0),
            answered          integer NOT NULL CHECK (answered >= 0),
            overall_precision double precision NOT NULL
                              CHECK (overall_precision BETWEEN 0 AND 1),
            rule              jsonb NOT NULL
        )
        """
    )
    op.execute("CREATE INDEX ix_llm_rules_endpoint ON llm_acceptance_rules "
               "(endpoint, model, created_at DESC, id DESC)")
    op.execute("CREATE TRIGGER llm_acceptance_rules_no_update BEFORE UPDATE ON "
               "llm_acceptance_rules FOR EACH ROW EXECUTE FUNCTION refuse_change()")


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS llm_acceptance_rules")
