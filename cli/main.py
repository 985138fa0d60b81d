"""The ``cca`` entry point: every command, and a one-line error instead of a traceback."""

from __future__ import annotations

import typer

from cli import (
    data,
    integrations_cmd,
    lifecycle_cmd,
    llm_cmd,
    main_job,
    model,
    registry_cmd,
    rules_cmd,
    sanitize_cmd,
    serve_cmd,
    token_cmd,
)
from cli.airflow_env import exec_airflow
from cli.common import console, run_app, settings

app = typer.Typer(
    name="cca",
    help="Call Centre Agent: classify and route service-desk tickets through a cheap cascade.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
db_app = typer.Typer(help="The embedded PostgreSQL server under CCA_HOME.", no_args_is_help=True)

app.command("run")(main_job.run_cmd)
app.command("import")(data.import_cmd)
app.command("ingest")(lifecycle_cmd.ingest_cmd)
app.command("sanitize")(sanitize_cmd.sanitize_cmd)
app.command("prepare")(lifecycle_cmd.prepare_cmd)
app.command("index")(data.index_cmd)
app.command("train")(model.train_cmd)
app.command("classify")(model.classify_cmd)
app.command("evaluate")(model.evaluate_cmd)
app.command("feedback")(model.feedback_cmd)
app.command("models")(registry_cmd.models_cmd)
app.command("promote")(registry_cmd.promote_cmd)
app.command("rollback")(registry_cmd.rollback_cmd)
app.command("purge")(lifecycle_cmd.purge_cmd)
app.command("quarantine")(lifecycle_cmd.quarantine_cmd)
app.command("serve")(serve_cmd.serve_cmd)
app.command("token")(token_cmd.token_cmd)
app.command("worker")(integrations_cmd.worker_cmd)
app.add_typer(integrations_cmd.app, name="integrations")
app.add_typer(serve_cmd.shadow_app, name="shadow")
app.add_typer(rules_cmd.app, name="rules")
app.add_typer(llm_cmd.app, name="llm")
app.add_typer(db_app, name="db")


@db_app.command("start")
def db_start() -> None:
    """Start the embedded server and leave it running (later commands reuse it)."""
    # deferred: SQLAlchemy and psycopg load only for commands that use the store
    from cca.store.server import start_embedded

    console.print(start_embedded(settings()))


@db_app.command("stop")
def db_stop() -> None:
    """Stop the embedded server if it is running."""
    # deferred: SQLAlchemy and psycopg load only for commands that use the store
    from cca.store.server import stop_embedded

    console.print(stop_embedded(settings()))


@db_app.command("status")
def db_status() -> None:
    """Say where the database is and whether it is up."""
    # deferred: SQLAlchemy and psycopg load only for commands that use the store
    from cca.store.server import status

    console.print(status(settings()))


@app.command("airflow", context_settings={"allow_extra_args": True,
                                          "ignore_unknown_options": True})
def airflow_cmd(ctx: typer.Context) -> None:
    """Run `airflow ARGS` with AIRFLOW_HOME under CCA_HOME and this project's dags/."""
    exec_airflow(list(ctx.args), settings())


def run() -> None:
    run_app(app)


if __name__ == "__main__":
    run()
