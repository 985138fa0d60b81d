"""Unknown intents: how much of what the model was never taught goes to review (issue #21).

A test set whose every intent was trained cannot show what happens to a ticket about
something new. So K intents, chosen at random with a fixed seed, are taken out of the training
file (and their route rules out of the rules), a model is trained on the rest in a scratch
home exactly as ``cca train --data`` does (import, prepare, retrain), and the whole test file
is classified: the removed intents' tickets are out of scope there, and only a review is right
for them (``cascade_eval.score`` already counts them so). Several seeds, since which intents
go matters more than anything else.

Reported per seed and averaged: ``unknown_rejection`` (share of out-of-scope tickets sent to
review), ``auto_accuracy`` and ``auto_coverage`` of the in-scope tickets, and the coverage a
model trained on every intent gives the *same* in-scope tickets (the baseline, one more
training shared by the seeds), so the cost of rejecting is measured in the same run.
"""

from __future__ import annotations

import os
import platform
import random
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from statistics import mean

from cascade.cascade import Cascade
from cca.bundle import BundleInfo, load_bundle
from cca.departments import load_department_map
from cca.errors import InputError
from cca.settings import Settings
from cca.store import Database
from cca.tickets import Decision
from evaluation.cascade_eval import score
from evaluation.scratch_home import scratch_home, shared_embeddings
from pipelines.import_tickets import import_parsed
from pipelines.lifecycle import Bar, prepare
from pipelines.read_tickets import Columns, ParsedFile, read_ticket_file

# Trains on the scratch home's store and makes the new model serve there; returns its bundle
# version. Supplied by the caller: training sits beside evaluation, not below it.
Trainer = Callable[[Settings, Database], str]
# The targets (Banking77, 10 of 77 intents held out), kept beside the figures.
TARGETS = {"unknown_rejection": 0.90, "auto_accuracy": 0.98, "coverage_drop": 0.03}
_BATCH = 256
_ALL_KEYS = ("n", "accuracy", "auto_accuracy", "auto_coverage", "out_of_scope", "cache_hits",
             "cache_wrong_hits")


@dataclass(frozen=True)
class UnknownIntentPlan:
    train: Path
    test: Path
    cols: Columns
    unknown_classes: int
    seeds: int = 3
    baseline: bool = True


@dataclass(frozen=True)
class Hooks:
    """What the caller supplies: the training step, one-line messages and progress bars."""

    train: Trainer
    say: Callable[[str], None]
    bar: Bar


@dataclass(frozen=True)
class _Run:
    """One model trained in a scratch home, and its decisions on the whole test file."""

    decisions: list[Decision]
    info: BundleInfo
    held_out: list[str]
    n_train: int  # labelled tickets imported
    seconds: dict[str, float]


def held_out_sets(labels: list[str], k: int, seeds: int) -> list[list[str]]:
    """The intents each seed removes: ``k`` of ``labels``, drawn with ``random.Random(seed)``."""
    if not 1 <= k < len(labels):
        raise InputError(f"--unknown-classes must be between 1 and {len(labels) - 1} (the "
                         f"training file has {len(labels)} labels), not {k}")
    ordered = sorted(labels)
    return [sorted(random.Random(seed).sample(ordered, k)) for seed in range(seeds)]


def without(parsed: ParsedFile, labels: Collection[str]) -> ParsedFile:
    """The parsed file minus the tickets of ``labels``."""
    keep = [t for t in parsed.tickets if parsed.labels.get(t.id) not in labels]
    ids = {t.id for t in keep}
    return replace(parsed, tickets=keep,
                   labels={k: v for k, v in parsed.labels.items() if k in ids},
                   lines={k: v for k, v in parsed.lines.items() if k in ids})


def run_unknown_eval(main: Settings, plan: UnknownIntentPlan, hooks: Hooks) -> dict:
    """Train and evaluate once per seed (and once on every intent); the report."""
    started, t0 = datetime.now(UTC), time.perf_counter()
    train = read_ticket_file(plan.train, plan.cols, max_chars=main.max_text_chars)
    train.refuse_if_rejected("nothing evaluated")
    test = read_ticket_file(plan.test, plan.cols, max_chars=main.max_text_chars,
                            collapse_duplicates=False)
    test.refuse_if_rejected("nothing evaluated")
    labels = sorted(set(train.labels.values()))
    plans = held_out_sets(labels, plan.unknown_classes, plan.seeds)
    (main.home / "scratch").mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="unknown-intents-", dir=main.home / "scratch"))
    try:
        embeddings = shared_embeddings(main, root)

        def run(name: str, held: list[str]) -> _Run:
            return _train_and_classify(main, root / name, embeddings, (train, test), held,
                                       hooks)

        base = run("baseline", []) if plan.baseline else None
        seeds = []
        for seed, held in enumerate(plans):
            hooks.say(f"seed {seed} ({seed + 1} of {len(plans)}): without {', '.join(held)}")
            seeds.append({"seed": seed, **seed_figures(run(f"seed-{seed}", held), test, base)})
            hooks.say(_one_line(seeds[-1]))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    report = summarise(seeds, base, test)
    report.update({"train": str(plan.train), "test": str(plan.test), "labels": len(labels),
                   "unknown_classes": plan.unknown_classes, "n_seeds": len(seeds),
                   "started_at": started.isoformat(timespec="seconds"),
                   "seconds": round(time.perf_counter() - t0, 1), "machine": machine()})
    return report


def _train_and_classify(main: Settings, home: Path, embeddings: Path,
                        files: tuple[ParsedFile, ParsedFile], held: list[str],
                        hooks: Hooks) -> _Run:
    """Import (without ``held``), prepare and train in a new scratch home; classify the test."""
    train, test = files
    seconds: dict[str, float] = {}
    with scratch_home(main, home, embeddings, without_rules_for=held) as (s, db):
        t0 = time.perf_counter()
        kept = without(train, held)
        hooks.say(f"{home.name}: import {len(kept.tickets)} of {len(train.tickets)} training "
                  f"tickets into a scratch home ({len(held)} intents left out)")
        import_parsed(db, kept, load_department_map(s.department_map), strict=True)
        hooks.say(f"{home.name}: prepare (redact, dedup, validate, embed and index)")
        prepare(s, db, hooks.bar)
        seconds["prepare"] = time.perf_counter() - t0
        hooks.say(f"{home.name}: train, evaluate, register, promote (scratch registry)")
        version = hooks.train(s, db)
        seconds["train"] = time.perf_counter() - t0 - seconds["prepare"]
        cascade = Cascade.of_bundle(s, db, load_bundle(s.models_dir, version))
        decisions = classify(cascade, test, hooks.bar, f"{home.name}: classifying the test file")
        seconds["classify"] = time.perf_counter() - t0 - seconds["prepare"] - seconds["train"]
    return _Run(decisions=decisions, info=cascade.bundle.info, held_out=held,
                n_train=len(kept.tickets), seconds={k: round(v, 1) for k, v in seconds.items()})


def classify(cascade: Cascade, test: ParsedFile, bar: Bar, description: str) -> list[Decision]:
    decisions: list[Decision] = []
    with bar(description) as advance:
        advance.set_total(len(test.tickets))
        for start in range(0, len(test.tickets), _BATCH):
            chunk = test.tickets[start:start + _BATCH]
            decisions += cascade.classify_batch(chunk)
            advance(len(chunk))
    return decisions


def seed_figures(run: _Run, test: ParsedFile, base: _Run | None) -> dict:
    """One seed's figures: out-of-scope tickets (truth not among the trained labels) and the
    in-scope rest, beside the baseline's figures for the same in-scope tickets."""
    truths = [test.labels[t.id] for t in test.tickets]
    known = set(run.info.labels)
    unknown = [i for i, t in enumerate(truths) if t not in known]
    inside = [i for i, t in enumerate(truths) if t in known]
    in_scope = _score(run, truths, inside)
    stages = Counter(run.decisions[i].stage for i in unknown)
    out = {
        "held_out": run.held_out, "n_unknown": len(unknown), "n_in_scope": len(inside),
        "unknown_rejection": (round(sum(run.decisions[i].label is None for i in unknown)
                                    / len(unknown), 4) if unknown else None),
        "auto_accuracy": in_scope["auto_accuracy"], "auto_coverage": in_scope["auto_coverage"],
        "in_scope_accuracy": in_scope["accuracy"],
        # Every test ticket, scored as ``cca evaluate`` scores it: a review of an
        # out-of-scope ticket counts as right.
        "all_tickets": {k: v for k, v in _score(run, truths, list(range(len(truths)))).items()
                        if k in _ALL_KEYS},
        "unknown_stage_share": {s: round(c / len(unknown), 4) for s, c in stages.items()},
        "in_scope_stage_share": in_scope["stage_share"],
        "cache_wrong_hits_on_unknown": sum(run.decisions[i].stage == "cache" for i in unknown),
        "bundle_version": run.info.version, "trained_labels": sorted(known),
        "n_train": run.n_train, "seconds": run.seconds,
        "bundle_metrics": {k: round(float(v), 4) for k, v in run.info.metrics.items()},
    }
    if base is not None:
        reference = _score(base, truths, inside)
        out["baseline_auto_coverage"] = reference["auto_coverage"]
        out["baseline_auto_accuracy"] = reference["auto_accuracy"]
        out["coverage_drop"] = round(reference["auto_coverage"] - in_scope["auto_coverage"], 4)
    return out


def _score(run: _Run, truths: list[str], rows: list[int]) -> dict:
    return score([run.decisions[i] for i in rows], [truths[i] for i in rows],
                 set(run.info.labels), run.info.departments)


def summarise(seeds: list[dict], base: _Run | None, test: ParsedFile) -> dict:
    """Means over the seeds (each seed's figures stay beside them) and the targets met."""
    def avg(key: str) -> float | None:
        values = [s[key] for s in seeds if s.get(key) is not None]
        return round(mean(values), 4) if values else None

    report: dict = {key: avg(key) for key in ("unknown_rejection", "auto_accuracy",
                                              "auto_coverage", "coverage_drop")}
    report["range"] = {key: [min(v), max(v)] for key in report
                       if (v := [s[key] for s in seeds if s.get(key) is not None])}
    report["baseline"] = None
    if base is not None:
        truths = [test.labels[t.id] for t in test.tickets]
        everything = _score(base, truths, list(range(len(truths))))
        report["baseline"] = {
            key: everything[key] for key in ("n", "auto_accuracy", "auto_coverage", "accuracy",
                                             "top1_accuracy", "stage_share", "cache_hits",
                                             "cache_wrong_hits", "cache_wrong_hit_bound")}
        report["baseline"].update({
            "bundle_version": base.info.version, "seconds": base.seconds,
            "bundle_metrics": {k: round(float(v), 4) for k, v in base.info.metrics.items()}})
    report["targets"] = TARGETS
    met = {"unknown_rejection": (report["unknown_rejection"] or 0) >= TARGETS["unknown_rejection"],
           "auto_accuracy": (report["auto_accuracy"] or 0) >= TARGETS["auto_accuracy"]}
    if report["coverage_drop"] is not None:
        met["coverage_drop"] = report["coverage_drop"] <= TARGETS["coverage_drop"]
    report["met"] = met
    report["seconds_per_seed"] = (round(mean(sum(s["seconds"].values()) for s in seeds), 1)
                                  if seeds else None)
    report["seeds"] = seeds
    return report


def _one_line(seed: dict) -> str:
    rejection, drop = seed["unknown_rejection"], seed.get("coverage_drop")
    return (f"seed {seed['seed']}: "
            + (f"{rejection:.1%} of {seed['n_unknown']} out-of-scope tickets sent to review; "
               if rejection is not None else "no out-of-scope ticket in the test file; ")
            + f"in scope {seed['auto_accuracy']:.2%} right at {seed['auto_coverage']:.1%} "
            "coverage" + (f" ({abs(drop) * 100:.1f} points {'less' if drop >= 0 else 'more'} "
                          "than the baseline's)" if drop is not None else ""))


def machine() -> dict:
    """The machine the run was timed on."""
    model = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            model = next((line.split(":", 1)[1].strip() for line in fh
                          if line.startswith("model name")), "")
    except OSError:
        pass
    return {"cpu": model or platform.processor(), "cpus": os.cpu_count(),
            "python": platform.python_version(), "platform": platform.platform()}
