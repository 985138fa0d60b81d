"""``cca evaluate --llm``: the cascade with and without the LLM stage, and the LLM alone.

The LLM's answers route tickets only where the acceptance rule stored for its endpoint and
model (``cca llm calibrate``) trusts them; the report shows that rule, the auto-answered
precision with and without the LLM, and the coverage it adds. With no ``CCA_LLM_BASE_URL`` the
local llama.cpp server (``cca llm serve``) is started for the run and stopped after it.
Tokens are priced at the evaluation's prices (default: $0.15 per million input and $0.60 per
million output tokens), whatever model actually answered.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cascade.llm_local import LocalLLMServer, model_file
from cca.settings import Settings
from cli.common import console, progress_bar, settings
from pipelines.read_tickets import Columns, read_ticket_file


@contextlib.contextmanager
def endpoint(s: Settings) -> Iterator[Settings]:
    """The settings pointing at an LLM: the configured one, else a local server started
    for the run (generous timeouts: a 0.5B model on a CPU takes seconds a ticket)."""
    if s.llm_base_url:
        yield s
        return
    with console.status("joining and verifying the local model"):
        path = model_file(s)
    server = LocalLLMServer(s)
    with console.status("starting the local LLM server"):
        server.start(path)
    with server:
        console.print(f"local LLM {server.model_name} at {server.base_url}")
        yield s.model_copy(update={
            "llm_base_url": server.base_url, "llm_model": server.model_name,
            "llm_timeout_s": 60.0,
            "llm_deadline_s": 120.0, "llm_max_concurrency": 1,
            "llm_response_format": "json_object_schema"})


def run(db: Any, path: Path, cols: Columns, *, limit: int | None, llm_sample: int,
        price_in_per_m: float, price_out_per_m: float, json_out: Path | None) -> dict:
    # deferred: the cascade loads scikit-learn and onnxruntime, the LLM stage openai
    from cascade.cascade import Cascade
    from cascade.llm_openai import OpenAICompatibleStage
    from evaluation.llm_eval import compare, llm_only, spread

    base = settings().model_copy(update={"llm_price_in_per_1k_usd": price_in_per_m / 1000,
                                         "llm_price_out_per_1k_usd": price_out_per_m / 1000})
    parsed = read_ticket_file(path, cols, max_chars=base.max_text_chars,
                              collapse_duplicates=False)
    parsed.refuse_if_rejected("nothing evaluated")
    keep = spread(len(parsed.tickets), limit)
    tickets = [parsed.tickets[i] for i in keep]
    truths = [parsed.labels[t.id] for t in tickets]
    with endpoint(base) as s:
        stage = OpenAICompatibleStage(s)
        cascade = Cascade.load(s, db, llm=stage)
        with progress_bar("cascade without, then with the LLM",
                          total=2 * len(tickets)) as advance:
            report = compare(cascade, stage, tickets, truths, progress=advance)
        only = tickets[:: max(1, len(tickets) // max(llm_sample, 1))][:llm_sample]
        only_truths = [parsed.labels[t.id] for t in only]
        with progress_bar("the LLM alone", total=len(only)) as advance:
            report["llm_only"] = llm_only(cascade, stage, only, only_truths,
                                          price_in_per_m=price_in_per_m,
                                          price_out_per_m=price_out_per_m, progress=advance)
        report["llm"] = {"base_url": s.llm_base_url, "model": s.llm_model,
                         "response_format": s.llm_response_format, "stats": stage.stats()}
    report.update({"data": str(path), "tickets_in_file": len(parsed.tickets),
                   "price_per_million_usd": {"input": price_in_per_m,
                                             "output": price_out_per_m}})
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(report, indent=2))
    return report
