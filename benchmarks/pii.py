"""Benchmark PII redaction: per-type precision/recall on the labelled fixture, per-type recall
and keep rate on the long-ticket fixtures (dev: tuned on; test: held out, issue #22), speed on
both, and how many Banking77 texts were changed at all (a false-positive sanity check: Banking77
has almost no real PII, so every change is suspect).

Usage:

    uv run python benchmarks/pii.py [--tickets N] [--batch-size N] [--out PATH]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

from cca.settings import Settings
from evaluation.pii_eval import evaluate, load_fixture
from redaction import Sanitizer, normalise

PROJECT_ROOT = Path(__file__).resolve().parent.parent

FIXTURE = PROJECT_ROOT / "tests" / "fixtures" / "pii_labelled.jsonl"
LONG_FIXTURES = {split: PROJECT_ROOT / "tests" / "fixtures" / f"pii_long_tickets_{split}.jsonl"
                 for split in ("dev", "test")}


def print_quality(title: str, quality: dict, errors: int) -> None:
    """Per-type table, the totals, the keep rates and the first ``errors`` mistakes."""
    print(f"\n{title}\n{'type':<10} {'P':>7} {'R':>7}   tp  fp  fn")
    for typ, s in quality["per_type"].items():
        print(f"{typ:<10} {s['precision']:>7.3f} {s['recall']:>7.3f} "
              f"{s['tp']:>4} {s['fp']:>3} {s['fn']:>3}")
    for name in ("structured", "overall"):
        s = quality[name]
        print(f"{name:<10} {s['precision']:>7.3f} {s['recall']:>7.3f} "
              f"{s['tp']:>4} {s['fp']:>3} {s['fn']:>3}")
    for typ, k in quality.get("keep", {}).items():
        print(f"keep {typ:<6} {k['rate']:>7.3f}  kept {k['kept']} lost {k['lost']}")
    if "keep_target_types" in quality:
        k = quality["keep_target_types"]
        print(f"keep amounts+dates+last4+refs {k['rate']:.4f} (lost {k['lost']})")
    for err in quality["errors"][:errors]:
        print(f"  {err['kind']} {err['type']}: {err['text']!r}")


def banking77_changes(texts: list[str], results: list) -> tuple[list, Counter[str], int]:
    """Texts redaction changed (before, after), per type, and those changed by normalising only."""
    changed_by_type: Counter[str] = Counter()
    changed = []
    for text, res in zip(texts, results, strict=True):
        if res.spans:
            changed.append((text, res.text))
            changed_by_type.update(set(res.counts))
    normalised_only = sum(1 for t, r in zip(texts, results, strict=True)
                          if not r.spans and r.text != t and normalise(t) == r.text)
    return changed, changed_by_type, normalised_only


def long_tickets(sanitizer: Sanitizer, errors: int) -> dict:
    """Quality and ms/ticket on each long-ticket split (the second pass is the timed one)."""
    out = {}
    for split, path in LONG_FIXTURES.items():
        if not path.exists():
            continue
        texts = [r["text"] for r in load_fixture(path)]
        sanitizer.redact_many(texts)
        start, cpu = time.perf_counter(), time.process_time()
        sanitizer.redact_many(texts)
        ms = (time.perf_counter() - start) * 1000 / len(texts)
        # CPU time too: on a shared machine wall time mostly measures the neighbours.
        cpu_ms = (time.process_time() - cpu) * 1000 / len(texts)
        quality = evaluate(sanitizer, path).as_dict()
        print_quality(f"long tickets, {split} ({len(texts)} tickets, {ms:.2f} ms/ticket, "
                      f"CPU {cpu_ms:.2f} ms/ticket)", quality, errors)
        out[split] = {"fixture": str(path.relative_to(PROJECT_ROOT)), "tickets": len(texts),
                      "ms_per_ticket": round(ms, 3), "cpu_ms_per_ticket": round(cpu_ms, 3),
                      "quality": quality}
    return out


def banking77_texts(settings: Settings) -> list[str]:
    with (settings.banking77_dir / "train.csv").open(newline="", encoding="utf-8") as fh:
        return [row["text"] for row in csv.DictReader(fh)]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tickets", type=int, default=0, help="0 = the whole train split")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--examples", type=int, default=15, help="changed texts to print")
    parser.add_argument("--errors", type=int, default=40, help="mistakes to print per set")
    parser.add_argument("--out", type=Path, default=None)
    return parser.parse_args()


def main() -> None:
    args = parse_args()

    settings = Settings()
    sanitizer = Sanitizer.from_settings(settings)
    t0 = time.perf_counter()
    _ = sanitizer.nlp
    load_s = time.perf_counter() - t0

    quality = evaluate(sanitizer, FIXTURE).as_dict()
    print_quality(f"labelled fixture ({FIXTURE.name})", quality, len(quality["errors"]))
    long = long_tickets(sanitizer, args.errors)

    texts = banking77_texts(settings)
    if args.tickets:
        texts = (texts * (args.tickets // len(texts) + 1))[: args.tickets]
    sanitizer.redact_many(texts[:256], batch_size=args.batch_size)  # warm-up
    start = time.perf_counter()
    results = sanitizer.redact_many(texts, batch_size=args.batch_size)
    elapsed = time.perf_counter() - start
    tps = len(texts) / elapsed

    changed, changed_by_type, normalised_only = banking77_changes(texts, results)
    print(f"\nBanking77 train: {len(texts)} texts in {elapsed:.2f} s = {tps:.0f} tickets/s "
          f"(batch {args.batch_size}, {os.cpu_count()} cores, spaCy load {load_s:.2f} s)")
    print(f"redacted: {len(changed)} texts ({len(changed) / len(texts):.2%}); per type: "
          f"{dict(changed_by_type.most_common())}; changed by normalisation only: "
          f"{normalised_only}")
    for before, after in changed[: args.examples]:
        print(f"  {before!r}\n   -> {after!r}")

    report = {
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "processor": platform.processor() or platform.machine()},
        "fixture": str(FIXTURE.relative_to(PROJECT_ROOT)),
        "quality": quality,
        "long_tickets": long,
        "throughput": {"texts": len(texts), "seconds": round(elapsed, 3),
                       "tickets_per_s": round(tps, 1), "batch_size": args.batch_size,
                       "ner": sanitizer.ner, "spacy_load_s": round(load_s, 3)},
        "banking77_changed": {"texts": len(changed), "share": round(len(changed) / len(texts), 5),
                              "per_type": dict(changed_by_type),
                              "normalisation_only": normalised_only,
                              "examples": [{"before": b, "after": a} for b, a in changed[:50]]},
    }
    out = args.out or settings.reports_dir / "benchmarks" / "pii.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, ensure_ascii=False))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
