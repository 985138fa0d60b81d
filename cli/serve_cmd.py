"""``cca serve`` (the BentoML service) and ``cca shadow report``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import Annotated

import typer

from cca.errors import StateError
from cca.package_data import data_path
from cca.settings import Settings
from cli.common import console, database, print_json, settings

shadow_app = typer.Typer(help="Shadow mode: the @challenger beside the champion.",
                         no_args_is_help=True)


def serve_cmd(
    port: Annotated[int | None, typer.Option(help="Port (default CCA_SERVE_PORT, 3000).")] = None,
    host: Annotated[str | None, typer.Option(help="Interface (default 127.0.0.1).")] = None,
    workers: Annotated[int | None, typer.Option(min=1, help="Worker processes.")] = None,
    shadow: Annotated[bool | None, typer.Option("--shadow/--no-shadow",
                                                help="Also run @challenger, log only.")] = None,
    intake_workers: Annotated[int | None, typer.Option(
        min=0, help="Webhook intake workers per process (0: none; `cca worker` instead).")
    ] = None,
) -> None:
    """Serve the cascade over HTTP (BentoML): the @champion from the MLflow registry."""
    # deferred: the bundle loads scikit-learn, the store SQLAlchemy
    from cca.bundle import current_version
    from cca.store.server import start_embedded, stop_embedded

    s = settings()
    if current_version(s.models_dir) is None and not list(s.models_dir.glob("LAST_GOOD_*")):
        raise StateError(f"nothing to serve under {s.models_dir}: run `cca run` (Banking77) or "
                         "`cca import` + `cca prepare` + `cca train` first")
    _check_routing(s)
    if port is not None and not 1 <= port <= 65535:
        raise typer.BadParameter(f"port {port} is not in 1..65535", param_hint="--port")
    env = _service_env(s, port=port, host=host, workers=workers, shadow=shadow)
    if intake_workers is not None:
        env["CCA_INTAKE_WORKERS"] = str(intake_workers)
    started_db = False
    if not s.database_url:
        # One server for every worker process, up before they start.
        message = start_embedded(s)
        started_db = "already running" not in message
        console.print(message)
    bind = f"{env.get('CCA_SERVE_HOST', s.serve_host)}:{env.get('CCA_SERVE_PORT', s.serve_port)}"
    console.print(f"serving on http://{bind} (OpenAPI: /api-docs); Ctrl+C stops")
    app_dir = data_path("serving").parent
    child = subprocess.Popen(
        [sys.executable, "-m", "bentoml", "serve", "serving.service:CallCentreAgent",
         # Where the packages are installed: the checkout, or site-packages for a wheel.
         "--working-dir", str(app_dir),
         "--port", env.get("CCA_SERVE_PORT", str(s.serve_port)),
         "--host", env.get("CCA_SERVE_HOST", s.serve_host)],
        cwd=app_dir, env=env)
    signal.signal(signal.SIGTERM, lambda *_: child.terminate())
    try:
        code = child.wait()
    except KeyboardInterrupt:
        child.send_signal(signal.SIGINT)
        code = child.wait()
    finally:
        if started_db:
            console.print(stop_embedded(s))
    if code not in (0, -signal.SIGINT, -signal.SIGTERM):
        raise typer.Exit(code if code > 0 else 1)


def _check_routing(s: Settings) -> None:
    """A routing map naming a department the model does not know is one line now, not a
    worker's traceback later (the service checks again against the champion it loads)."""
    # deferred: the routing map's modules load only when an integration is configured
    from cca.bundle import load_bundle_info
    from pipelines.integrations.vendors import configured, routing_from_settings

    info = load_bundle_info(s.models_dir)
    if configured(s) and info is not None:
        routing_from_settings(s, set(info.departments.values()))


def _service_env(s: Settings, **options: int | str | bool | None) -> dict[str, str]:
    """The service's environment: this home, and the command's options as CCA_SERVE_*."""
    env = {**os.environ, "BENTOML_HOME": str(s.bentoml_home), "BENTOML_DO_NOT_TRACK": "True",
           "CCA_HOME": str(s.home)}
    for name, value in options.items():
        if value is not None:
            env[f"CCA_SERVE_{name.upper()}"] = (str(value).lower() if isinstance(value, bool)
                                                 else str(value))
    return env


@shadow_app.command("report")
def shadow_report_cmd(
    days: Annotated[int, typer.Option(min=1, help="Look back this many days.")] = 30,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Agreement of @challenger with the champion, and both models' accuracy on feedback."""
    # deferred: the report loads SQLAlchemy and pandas
    from evaluation.shadow_report import shadow_report

    with database() as db:
        report = shadow_report(db, days)
    if json_out:
        print_json(report)
        return
    if not report["compared"]:
        console.print(f"no shadow decisions in the last {days} days: serve with "
                      "`cca serve --shadow` while a @challenger exists")
        return
    for pair in report["pairs"]:
        console.print(
            f"champion {pair['champion_version']} vs challenger {pair['challenger_version']}: "
            f"{pair['compared']} tickets, agreement {pair['agreement']:.1%}; "
            f"on {pair['with_feedback']} with feedback: champion "
            f"{_pct(pair['champion_accuracy'])}, challenger {_pct(pair['challenger_accuracy'])}"
            f"; challenger {pair['challenger_ms_mean']:.1f} ms/ticket")


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"
