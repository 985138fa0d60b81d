"""LLM explanations produced after the decision, off the request path.

Revision ID: 0004
Revises: 0003
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Attached to the audited decision by ticket id and the hash of the redacted text. Rows are
    # never changed (UPDATE refused); they go with the ticket on a right-to-deletion request,
    # since an explanation paraphrases the ticket.
    op.execute(
        """
        CREATE TABLE decision_explanations (
            record_id         uuid PRIMARY KEY,
            ticket_id         text NOT NULL REFERENCES tickets (id) ON DELETE CASCADE,
            text_hash         text NOT NULL,
            label             text NOT NULL,
            explanation       text NOT NULL,
            model             text NOT NULL,
            prompt_tokens     integer NOT NULL DEFAULT 0,
            completion_tokens integer NOT NULL DEFAULT 0,
            cost_usd          double precision NOT NULL DEFAULT 0,
            created_at        timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute("CREATE INDEX ix_explanations_ticket ON decision_explanations "
               "(ticket_id, created_at DESC)")
    op.execute("CREATE TRIGGER decision_explanations_no_update BEFORE UPDATE ON "
               "decision_explanations FOR EACH ROW EXECUTE FUNCTION refuse_change()")


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS decision_explanations")
