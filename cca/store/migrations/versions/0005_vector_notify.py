"""Tell listeners which labelled vectors and track records changed.

The service keeps an in-process copy of the labelled vectors (``cca.memory_index``) and of
the cache's track record; these notifications keep every worker's copy equal to the tables
within milliseconds of a commit (feedback, re-indexing, right-to-deletion).

Revision ID: 0005
Revises: 0004
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # One notification per statement, naming the tickets it touched (JSON array); '*' when
    # the list would not fit in a notification (8,000 bytes), which asks for a full reload.
    # Delivered only when the transaction commits, so a listener that re-reads those rows
    # sees the committed state.
    op.execute(
        """
        CREATE FUNCTION notify_vector_change() RETURNS trigger LANGUAGE plpgsql AS $$
        DECLARE
            payload text;
        BEGIN
            IF TG_OP = 'TRUNCATE' THEN
                payload := '*';
            ELSIF TG_OP = 'DELETE' THEN
                SELECT json_agg(DISTINCT ticket_id)::text INTO payload FROM old_rows;
            ELSE
                SELECT json_agg(DISTINCT ticket_id)::text INTO payload FROM new_rows;
            END IF;
            IF payload IS NULL THEN
                RETURN NULL;
            END IF;
            IF octet_length(payload) > 7000 THEN
                payload := '*';
            END IF;
            PERFORM pg_notify('cca_vectors', payload);
            RETURN NULL;
        END
        $$
        """
    )
    # A transition table needs one trigger per event.
    for event, ref in (("INSERT", "NEW TABLE AS new_rows"), ("UPDATE", "NEW TABLE AS new_rows"),
                       ("DELETE", "OLD TABLE AS old_rows")):
        op.execute(
            f"CREATE TRIGGER ticket_embeddings_notify_{event.lower()} AFTER {event} ON "
            f"ticket_embeddings REFERENCING {ref} FOR EACH STATEMENT "
            "EXECUTE FUNCTION notify_vector_change()"
        )
    op.execute("CREATE TRIGGER ticket_embeddings_notify_truncate AFTER TRUNCATE ON "
               "ticket_embeddings FOR EACH STATEMENT EXECUTE FUNCTION notify_vector_change()")
    op.execute(
        """
        CREATE FUNCTION notify_track_record_change() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('cca_track_record', '');
            RETURN NULL;
        END
        $$
        """
    )
    op.execute(
        "CREATE TRIGGER cache_track_record_notify AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON "
        "cache_track_record FOR EACH STATEMENT EXECUTE FUNCTION notify_track_record_change()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER cache_track_record_notify ON cache_track_record")
    op.execute("DROP FUNCTION notify_track_record_change()")
    for event in ("insert", "update", "delete", "truncate"):
        op.execute(f"DROP TRIGGER ticket_embeddings_notify_{event} ON ticket_embeddings")
    op.execute("DROP FUNCTION notify_vector_change()")
