"""``cca rules check`` and ``cca rules evaluate``: let an analyst see which rules misfire."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from cca.errors import InputError
from cli.common import console, settings, stdout
from cli.data import LabelCol, TextCol
from evaluation.rules_eval import evaluate_rules
from pipelines.read_tickets import Columns, read_ticket_file
from rules import load_rules

app = typer.Typer(help="Check and measure the YAML rules.", no_args_is_help=True)
RulesOpt = Annotated[Path | None, typer.Option("--rules", help="Rule file (default: settings).")]


@app.command("check")
def check(rules: RulesOpt = None) -> None:
    """Load and compile a rule file; fails with the file, rule and reason."""
    path = rules or settings().rules_path
    rs = load_rules(path)
    console.print(f"{path}: {len(rs.rules)} rules OK (version {rs.version})")


@app.command("evaluate")
def evaluate(
    data: Annotated[Path, typer.Option(help="Labelled CSV/JSONL.")],
    text_col: TextCol = "text",
    label_col: LabelCol = "label",
    rules: RulesOpt = None,
) -> None:
    """Print each rule's hits and precision on labelled tickets."""
    if not label_col:
        raise InputError("--label-col is required")
    rs = load_rules(rules or settings().rules_path)
    parsed = read_ticket_file(data, Columns(text=text_col, label=label_col),
                              collapse_duplicates=False)
    parsed.refuse_if_rejected("nothing evaluated")
    tickets = parsed.tickets
    stats = evaluate_rules(rs, tickets, [parsed.labels[t.id] for t in tickets])
    table = Table(title=f"{rs.path.name} on {data.name} ({len(tickets)} tickets)")
    for col in ("rule", "kind", "label", "hits", "correct", "precision", "misfires on"):
        table.add_column(col)
    for s in sorted(stats, key=lambda s: (s.kind, -(s.hits))):
        p = s.precision
        style = "red" if p is not None and p < 0.95 else None
        table.add_row(s.rule_id, s.kind, s.label or "-", str(s.hits),
                      str(s.correct) if s.kind == "route" else "-",
                      f"{p:.3f}" if p is not None else "-",
                      ", ".join(f"{k} ({v})" for k, v in s.wrong_labels.most_common(3)),
                      style=style)
    stdout.print(table)
    route = [s for s in stats if s.kind == "route"]
    hits, correct = sum(s.hits for s in route), sum(s.correct for s in route)
    if hits:
        stdout.print(f"route rules: {hits} hits, precision {correct / hits:.3f}")
