"""What the promotion gate decided, written where a data scientist looks: MLflow.

The project database keeps the record (``model_events``); this puts the same decision on the
candidate's run (``gate.*`` tags, ``gate_*`` metrics, a per-class F1 change plot against the
champion, a section at the top of the run's description) and on the model version (the same
tags, and its description), so "why was this promoted (or not)?" is answered on the page.
"""

from __future__ import annotations

import time
from typing import Any

import pandas as pd
from mlflow.entities import Metric, RunTag

from cca.bundle import load_bundle_info
from cca.settings import Settings
from training import charts
from training.gate import GatePolicy, GateResult
from training.model_card import version_description
from training.results import Registration
from training.tracking import NOTE

_SECTION_END = "\n\n---\n\n"  # between the gate section and the model card in a description
_MAX_RUN_TAG = 8000  # MLflow's limit on a run tag's value
DELTA_PLOT = "gate/per_class_f1_delta.png"


def gate_tags(registered: Registration, gate: GateResult, policy: GatePolicy,
              ) -> dict[str, str]:
    """The decision as flat string tags (the same on the run and on the model version)."""
    champion = registered.evaluation.champion
    guarantee = registered.evaluation.candidate.guarantee
    values: dict[str, Any] = {
        "gate.decision": "passed" if gate.passed else "refused",
        "gate.reasons": "; ".join(gate.reasons) or "-",
        "gate.notes": "; ".join(gate.notes) or "-",
        "gate.min_macro_f1": policy.min_macro_f1,
        "gate.max_class_drop": policy.max_class_drop,
        "gate.tolerance": policy.tolerance,
        "gate.candidate_macro_f1": gate.candidate_macro_f1,
        "gate.champion_version": champion.version if champion else None,
        "gate.champion_macro_f1": gate.champion_macro_f1,
        "gate.delta_macro_f1": gate.delta_macro_f1,
        "gate.worst_class": gate.worst_class,
        "gate.worst_class_drop": gate.worst_class_drop,
        "gate.guarantee": ("-" if not guarantee
                           else "holds" if guarantee["holds"] else "fails"),
    }
    return {k: "-" if v is None else str(v)[:1000] for k, v in values.items()}


def gate_metrics(gate: GateResult, policy: GatePolicy) -> dict[str, float]:
    """The decision's figures as metrics (only those that exist), to chart across runs."""
    values = {"gate_passed": 1.0 if gate.passed else 0.0,
              "gate_min_macro_f1": policy.min_macro_f1,
              "gate_max_class_drop": policy.max_class_drop,
              "gate_candidate_macro_f1": gate.candidate_macro_f1,
              "gate_champion_macro_f1": gate.champion_macro_f1,
              "gate_delta_macro_f1": gate.delta_macro_f1,
              "gate_worst_class_drop": gate.worst_class_drop}
    return {k: float(v) for k, v in values.items() if v is not None}


def gate_summary(registered: Registration, gate: GateResult, policy: GatePolicy) -> str:
    """Markdown at the top of the run's and the version's description."""
    champion = registered.evaluation.champion
    version = registered.model_version
    # plain text first: the registry's version list shows a description's first line raw
    head = (f"Promotion gate: passed (v{version} became @champion)" if gate.passed
            else f"Promotion gate: refused (v{version} stays @challenger, not @champion)")
    lines = [head, "",
             f"- required macro-F1 ≥ {policy.min_macro_f1:.4f}; candidate "
             f"{_fmt(gate.candidate_macro_f1)}"]
    if champion is not None:
        lines.append(f"- champion v{champion.version} on the same holdout: "
                     f"{_fmt(gate.champion_macro_f1)} (delta {_fmt(gate.delta_macro_f1, '+')})")
    if gate.worst_class is not None:
        lines.append(f"- worst class change: {gate.worst_class} "
                     f"{_fmt(0.0 - (gate.worst_class_drop or 0.0), '+')} F1 "
                     f"(allowed drop {policy.max_class_drop:.3f})")
    lines += [f"- refused because: {reason}" for reason in gate.reasons]
    lines += [f"- note: {note}" for note in gate.notes]
    return "\n".join(lines)


def _fmt(value: float | None, sign: str = "") -> str:
    return "-" if value is None else f"{value:{sign}.4f}"


def log_gate_decision(settings: Settings, client: Any, registered: Registration,
                      gate: GateResult, policy: GatePolicy) -> None:
    """Tags, metrics, the delta plot and descriptions on the run and the model version."""
    name, version = settings.registered_model, registered.model_version
    run_id = registered.evaluation.candidate.run.run_id
    tags, summary = gate_tags(registered, gate, policy), gate_summary(registered, gate, policy)
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, v, now, 0)
                                      for k, v in gate_metrics(gate, policy).items()],
                     tags=[RunTag(k, v) for k, v in tags.items()])
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    card = client.get_run(run_id).data.tags.get(NOTE, "")
    card = card.split(_SECTION_END, 1)[-1]  # a decision written before is replaced
    client.set_tag(run_id, NOTE, (summary + _SECTION_END + card)[:_MAX_RUN_TAG])
    evaluation = registered.evaluation
    info = load_bundle_info(settings.models_dir, evaluation.candidate.bundle_version)
    description = summary if info is None else version_description(
        info, evaluation.candidate_scores["macro_f1"], evaluation.holdout_n, gate=summary)
    client.update_model_version(name, version, description=description)
    _log_delta(client, run_id, registered, policy)


def _log_delta(client: Any, run_id: str, registered: Registration,
               policy: GatePolicy) -> None:
    """Candidate minus champion F1 per class, plot and CSV (only with a scored champion)."""
    champion = registered.evaluation.champion
    if champion is None or champion.scores is None:
        return
    theirs = {c: f for c, f in champion.scores["per_class_f1"].items()
              if c not in champion.kept_in_fit}
    ours = registered.evaluation.candidate_scores["per_class_f1"]
    if not theirs:
        return
    fig = charts.delta_figure(ours, theirs, policy.max_class_drop,
                              f"v{registered.model_version} vs champion v{champion.version}: "
                              f"per-class F1 change, largest fall first")
    client.log_figure(run_id, fig, DELTA_PLOT)
    charts.close(fig)
    table = pd.DataFrame({"class": list(theirs), "champion_f1": list(theirs.values()),
                          "candidate_f1": [ours.get(c, 0.0) for c in theirs]})
    table["delta"] = table["candidate_f1"] - table["champion_f1"]
    table = table.sort_values(["delta", "class"], kind="stable").round(6)
    client.log_text(run_id, table.to_csv(index=False), "gate/per_class_f1_delta.csv")
