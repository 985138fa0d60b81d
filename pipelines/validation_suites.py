"""The pandas side of validation: suite files, the frames the suites see, readable failures.

Nothing here imports Great Expectations (its import takes seconds), so callers and tests of the
derivations stay cheap. The suites themselves are JSON in ``great_expectations/`` so analysts
can read and review them without Python.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from cca.errors import ConfigError

RAW, CLEAN, TRAINING = "raw_tickets", "clean_tickets", "training_set"

# Columns holding ticket text: failures name the row ids, never the text (it may hold PII).
TEXT_COLUMNS = frozenset({"subject", "body", "clean_subject", "clean_body", "text"})
# Columns whose value is a per-class figure: failures name the label, not every row.
CLASS_COLUMNS = frozenset({"train_rows_of_label", "largest_class_ratio"})
# Columns whose values help find failing rows in Data Docs.
INDEX_COLUMNS = {RAW: ["id"], CLEAN: ["id"], TRAINING: ["id", "split", "label"]}
# A card-number-shaped run: 13-19 digits, single spaces or dashes between them.
CARD_SHAPED = re.compile(r"\d(?:[ -]?\d){12,18}")


def load_suite(suites_dir: Path, name: str) -> dict[str, Any]:
    """The suite as committed; a broken file is a ConfigError, not a silent empty suite."""
    path = suites_dir / f"{name}.json"
    try:
        suite = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read validation suite {path}: {exc}") from exc
    if suite.get("name") != name or not suite.get("expectations"):
        raise ConfigError(f"validation suite {path}: expected name {name!r} and expectations")
    return suite


def _column(df: pd.DataFrame, name: str) -> pd.Series:
    """The column, or all-null when missing: the schema expectation reports it, not a KeyError."""
    return df[name] if name in df.columns else pd.Series(None, index=df.index, dtype=object)


def raw_frame(df: pd.DataFrame, latest: pd.Timestamp | None = None) -> pd.DataFrame:
    """Raw tickets plus derived per-row columns: ``created_at_naive`` (a timestamp without time
    zone), ``created_in_future`` (after ``latest``) and ``text_chars`` (subject + body)."""
    df = df.assign(text_chars=_column(df, "subject").fillna("").astype(str).str.len()
                   + _column(df, "body").fillna("").astype(str).str.len())
    created = _column(df, "created_at")
    if latest is not None:
        stamps = pd.to_datetime(created, utc=True, errors="coerce")
        df = df.assign(created_in_future=(stamps > latest).astype(object))
    if isinstance(created.dtype, pd.DatetimeTZDtype):
        naive = pd.Series(False, index=df.index, dtype=object)
    elif pd.api.types.is_datetime64_dtype(created.dtype):
        naive = pd.Series(True, index=df.index, dtype=object)
    else:  # object column: datetimes, strings or None, one by one
        naive = created.map(lambda v: getattr(v, "tzinfo", None) is None, na_action="ignore")
    return df.assign(created_at_naive=naive.where(created.notna(), None).astype(object))


def luhn_ok(digits: str) -> bool:
    """The Luhn check digit every payment card number carries."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


def _has_card_number(text: object) -> bool:
    if not isinstance(text, str):
        return False
    return any(luhn_ok(re.sub(r"[ -]", "", m.group())) for m in CARD_SHAPED.finditer(text))


def clean_frame(df: pd.DataFrame) -> pd.DataFrame:
    """Redacted tickets plus ``card_number_left`` (a Luhn-valid card number survived) and
    ``text_chars`` (redacted subject + body).

    A regex cannot check Luhn, and without it every long order number would stop the run.
    """
    subject, body = _column(df, "clean_subject"), _column(df, "clean_body")
    left = subject.map(_has_card_number) | body.map(_has_card_number)
    chars = subject.fillna("").astype(str).str.len() + body.fillna("").astype(str).str.len()
    return df.assign(card_number_left=left.astype(object), text_chars=chars)


def training_frame(train: pd.DataFrame, holdout: pd.DataFrame) -> pd.DataFrame:
    """Train and holdout stacked with ``split``, plus the derived class and overlap columns.

    One table gives one validation run and one Data Docs page for the whole training set;
    class balance and leakage become per-row values that ordinary expectations can check.
    """
    base = ["id", "text", "label"]
    parts = [part.assign(split=split) for part, split in ((train, "train"), (holdout, "holdout"))]
    frame = pd.concat(parts, ignore_index=True)
    for col in base:
        if col not in frame.columns:
            frame[col] = None
    is_train, labels = frame["split"] == "train", frame["label"]

    counts = labels[is_train].value_counts()
    per_row = labels.map(counts).fillna(0).astype("Int64").where(labels.notna())
    frame["train_rows_of_label"] = per_row
    largest = float(counts.max()) if len(counts) else 0.0
    frame["largest_class_ratio"] = (largest / per_row.astype("Float64")).where(per_row > 0)

    train_ids = set(frame.loc[is_train, "id"].dropna())
    overlap = frame["id"].where(~is_train & frame["id"].isin(train_ids))
    frame["id_also_in_train"] = overlap.astype(object).where(overlap.notna(), None)

    norm = frame["text"].map(lambda t: " ".join(t.split()) if isinstance(t, str) else None)
    first_train_id = (
        pd.DataFrame({"norm": norm[is_train], "id": frame.loc[is_train, "id"]})
        .dropna().drop_duplicates("norm").set_index("norm")["id"]
    )
    same = norm.where(~is_train).map(first_train_id)
    frame["train_id_with_same_text"] = same.astype(object).where(same.notna(), None)
    return frame


def _example(entry: Mapping[str, Any], column: str | None) -> str:
    """One failing row as ``value (id=…)``; text columns show only the id."""
    where = ", ".join(f"{k}={v}" for k, v in entry.items() if k != column)
    if column in TEXT_COLUMNS or column not in entry:
        return where
    return f"{entry[column]!r} ({where})" if where else repr(entry[column])


def describe_failure(result: Any) -> str:
    """A Great Expectations result as one line an operator can act on."""
    cfg = result.expectation_config
    kwargs, res = cfg.kwargs, dict(result.result or {})
    column = kwargs.get("column") or kwargs.get("column_list")
    pii = (cfg.meta or {}).get("pii")
    head = f"{cfg.type}({column}{', ' + pii if pii else ''})" if column else cfg.type
    error = _exception_message(result.exception_info)
    if error:
        return f"{head}: error: {error}"
    if "unexpected_count" in res:
        entries = res.get("partial_unexpected_index_list") or []
        if column in CLASS_COLUMNS:
            shown = {e.get("label"): e.get(column) for e in entries}
            examples = [f"{label}: {value}" for label, value in shown.items()]
        else:
            examples = list(dict.fromkeys(_example(e, column) for e in entries))
        total = res.get("element_count", "?")
        sample = f", e.g. {'; '.join(examples[:3])}" if examples else ""
        return f"{head}: {res['unexpected_count']} of {total} rows{sample}"
    mismatched = (res.get("details") or {}).get("mismatched")
    if mismatched:
        parts = [f"missing {mismatched['missing']}"] if mismatched.get("missing") else []
        if mismatched.get("unexpected") and kwargs.get("exact_match"):
            parts.append(f"unexpected {mismatched['unexpected']}")
        return f"{head}: {'; '.join(parts)}"
    return f"{head}: observed {res.get('observed_value')!r}, expected {_bounds(kwargs)}"


def _exception_message(info: Any) -> str | None:
    """First line of the error GE caught, whether reported flat or per metric."""
    if not isinstance(info, Mapping):
        return None
    found = [info] if "raised_exception" in info else [v for v in info.values()
                                                          if isinstance(v, Mapping)]
    for item in found:
        if item.get("raised_exception"):
            lines = str(item.get("exception_message") or "error").splitlines() or ["error"]
            return lines[0][:200]
    return None


def _bounds(kwargs: Mapping[str, Any]) -> str:
    keys = ("value_set", "min_value", "max_value", "value")
    return ", ".join(f"{k}={kwargs[k]!r}" for k in keys if kwargs.get(k) is not None)


def redact_result(result: Any, index_columns: Iterable[str]) -> None:
    """Replace ticket text in a result by row ids before it is stored or rendered as Data Docs."""
    cfg_column = result.expectation_config.kwargs.get("column")
    if cfg_column not in TEXT_COLUMNS or not result.result:
        return
    res, keep = result.result, set(index_columns)
    found = res.get("partial_unexpected_index_list") or []
    entries = [{k: v for k, v in e.items() if k in keep} for e in found]
    labels = [", ".join(f"{k}={v}" for k, v in e.items()) or "row" for e in entries]
    if "partial_unexpected_index_list" in res:
        res["partial_unexpected_index_list"] = entries
    if "partial_unexpected_list" in res:
        res["partial_unexpected_list"] = labels
    if "partial_unexpected_counts" in res:
        res["partial_unexpected_counts"] = [{"value": v, "count": 1} for v in labels]
    for key in ("unexpected_list", "unexpected_index_list"):
        res.pop(key, None)
