"""``cca llm serve`` and ``cca llm model``: the local LLM for development and the demo."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

from cascade.llm_local import MODEL_SIZE, LocalLLMServer, model_file, model_path
from cca.errors import StateError
from cca.settings import Settings
from cli.common import console, settings, stdout

app = typer.Typer(help="The local LLM: llama.cpp's OpenAI-compatible server on the CPU.",
                  no_args_is_help=True)


def prepare_model(s: Settings) -> Path:
    """The verified GGUF, with a progress bar while it is joined or its sha256 checked."""
    what = "verifying model" if model_path(s).is_file() else "joining model chunks"
    with Progress(TextColumn(what), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  console=console, transient=True,
                  disable=bool(os.environ.get("CCA_NO_PROGRESS"))) as bar:
        task = bar.add_task(what, total=MODEL_SIZE)
        return model_file(s, progress=lambda n: bar.advance(task, n))


@app.command("model")
def model_cmd() -> None:
    """Join (first time) and verify the GGUF model; print its path."""
    stdout.print(str(prepare_model(settings())), highlight=False, soft_wrap=True)


@app.command("serve")
def serve_cmd(
    port: Annotated[int | None, typer.Option(min=1, max=65535,
                                             help="Port (default CCA_LLM_LOCAL_PORT, 8088).")
                    ] = None,
    threads: Annotated[int | None, typer.Option(
        min=1, help="CPU threads (default CCA_LLM_LOCAL_THREADS, else all cores).")] = None,
    ctx: Annotated[int | None, typer.Option(
        min=512, help="Context window in tokens (default CCA_LLM_LOCAL_CTX, 4096).")] = None,
) -> None:
    """Serve the local LLM until Ctrl+C; prints the CCA_LLM_* lines that point cca at it."""
    s = settings()
    model = prepare_model(s)
    server = LocalLLMServer(s, port=port, threads=threads, ctx=ctx)
    with console.status(f"starting the LLM server on {server.base_url}"):
        server.start(model)
    signal.signal(signal.SIGTERM, lambda *_: server.process and server.process.terminate())
    try:
        console.print(f"serving {model.name} on {server.base_url} ({server.threads} threads, "
                      f"context {server.ctx}); log {server.log_path}; Ctrl+C stops",
                      highlight=False, soft_wrap=True)
        for line in (f"CCA_LLM_BASE_URL={server.base_url}",
                     f"CCA_LLM_MODEL={server.models()[0]}"):
            stdout.print(line, highlight=False, soft_wrap=True)
        sys.stdout.flush()
        code = server.wait()
    except KeyboardInterrupt:
        code = 0
    finally:
        server.stop()
    if code not in (0, -signal.SIGINT, -signal.SIGTERM):
        raise StateError(f"the LLM server exited with code {code}; see {server.log_path}")
