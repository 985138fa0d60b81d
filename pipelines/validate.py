"""Validate tickets and training sets with Great Expectations 1.x before anything learns from them.

Three suites live in the repo (``great_expectations/*.json``): raw tickets, redacted tickets
and training sets. Each run writes its result and a Data Docs page under ``CCA_HOME/
great_expectations`` (never into the repo); a failure raises :class:`ValidationFailed`, which
names the suite, the first failed expectations and that page, so the caller stops before
training and the current champion keeps serving.

Great Expectations is imported on first use only: the import alone takes seconds.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import pandas as pd

from cca.errors import CCAError, ConfigError
from cca.settings import Settings
from pipelines.validation_suites import (
    CLEAN,
    INDEX_COLUMNS,
    RAW,
    TRAINING,
    clean_frame,
    describe_failure,
    load_suite,
    raw_frame,
    redact_result,
    training_frame,
)

# GE logs hundreds of "Skipping registering function ..." lines at INFO while importing, and
# more at run time; its warnings and errors still come through.
logging.getLogger("great_expectations").setLevel(logging.WARNING)

SITE = "local_site"
MAX_NAMED_FAILURES = 3
KEEP_RUNS = 100  # stored results per suite; older ones and their pages are deleted


@dataclass(frozen=True)
class ValidationReport:
    """What one suite said about one frame; ``data_docs`` is the HTML page of this run."""

    suite: str
    success: bool
    evaluated: int
    failed: list[str] = field(default_factory=list)
    data_docs: Path = Path()
    seconds: float = 0.0
    # Ids of the rows that broke a row-level expectation, and whether every failure was one
    # (then those rows can be quarantined and the rest go on; otherwise the batch stops).
    failing_ids: list[str] = field(default_factory=list)
    row_level: bool = True
    broken_by: dict[str, list[str]] = field(default_factory=dict)  # id -> expectations

    def summary(self) -> str:
        if self.success:
            return f"{self.suite}: {self.evaluated} rows passed ({self.seconds:.1f} s)"
        named = "; ".join(self.failed[:MAX_NAMED_FAILURES])
        more = len(self.failed) - MAX_NAMED_FAILURES
        extra = f" (+{more} more)" if more > 0 else ""
        return (f"validation suite {self.suite!r} failed {len(self.failed)} expectation(s) on "
                f"{self.evaluated} rows: {named}{extra}; Data Docs: {self.data_docs}")


class ValidationFailed(CCAError):
    """Data broke a suite: the run stops here, and the page in ``report.data_docs`` says why."""

    exit_code = 2

    def __init__(self, report: ValidationReport) -> None:
        super().__init__(report.summary())
        self.report = report


def validate_raw(df: pd.DataFrame, settings: Settings) -> ValidationReport:
    """Raw tickets (id, source, subject, body, created_at tz-aware, label) before redaction."""
    latest = pd.Timestamp.now(tz="UTC") + pd.Timedelta(days=1)
    return _validate(RAW, raw_frame(df, latest), settings, {})


def validate_clean(df: pd.DataFrame, settings: Settings) -> ValidationReport:
    """Redacted tickets (id, clean_subject, clean_body, label): no PII pattern may be left."""
    return _validate(CLEAN, clean_frame(df), settings, {})


def validate_training_set(
    train_df: pd.DataFrame,
    holdout_df: pd.DataFrame,
    labels: Collection[str],
    settings: Settings,
) -> ValidationReport:
    """Train + holdout (id, text, label): known labels, balance, no leakage between the two."""
    params = {
        "labels": sorted(labels),
        "train_min_per_class": settings.train_min_per_class,
        "train_max_class_ratio": settings.train_max_class_ratio,
    }
    return _validate(TRAINING, training_frame(train_df, holdout_df), settings, params)


def _validate(
    name: str, frame: pd.DataFrame, settings: Settings, params: Mapping[str, Any]
) -> ValidationReport:
    """Run one suite on one frame, store the (redacted) result, render its page, judge it."""
    started = time.perf_counter()
    suite_dict = load_suite(settings.ge_suites_dir, name)
    frame = frame.reset_index(drop=True)
    index_columns = [c for c in INDEX_COLUMNS[name] if c in frame.columns]
    parameters = {
        "min_text_chars": settings.min_text_chars,
        "max_text_chars": settings.max_text_chars,
        **params,
    }
    context = _context(settings.ge_home)
    result, key, order = _run_suite(context, suite_dict, frame, parameters, index_columns)
    broken_by, row_level = _failing_rows(result)
    for item in result.results:
        redact_result(item, index_columns)
    _prune(settings.ge_home, name)
    context.validation_results_store.set(key, result)
    context.build_data_docs(site_names=[SITE], resource_identifiers=[key])
    # GE groups results by metric; report them in the suite's order (schema first).
    ranked = sorted(result.results, key=lambda r: order.get(r.expectation_config.id, len(order)))
    failed = [describe_failure(r) for r in ranked if not r.success]
    report = ValidationReport(
        suite=name,
        success=bool(result.success),
        evaluated=len(frame),
        failed=failed,
        data_docs=_page(context, key),
        seconds=round(time.perf_counter() - started, 3),
        failing_ids=list(broken_by),
        row_level=row_level,
        broken_by=broken_by,
    )
    if not report.success:
        raise ValidationFailed(report)
    return report


def _context(ge_home: Path) -> Any:
    """An ephemeral context whose results and Data Docs persist under ``ge_home``.

    Ephemeral, because the suites come from the repo on every run and no ``gx/`` project
    folder is wanted; the two stores that matter are pointed at the filesystem so Data Docs'
    index lists earlier runs too. Progress bars off: they would write to stderr per run.
    """
    # Deferred: Great Expectations is a heavy import (see the module's docstring).
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    defaults = InMemoryStoreBackendDefaults()
    defaults.stores[defaults.validation_results_store_name]["store_backend"] = {
        "class_name": "TupleFilesystemStoreBackend",
        "base_directory": str(ge_home / "validations"),
    }
    defaults.data_docs_sites = {
        SITE: {
            "class_name": "SiteBuilder",
            "show_how_to_buttons": False,
            "store_backend": {
                "class_name": "TupleFilesystemStoreBackend",
                "base_directory": str(ge_home / "data_docs"),
            },
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        }
    }
    config = DataContextConfig(
        store_backend_defaults=defaults,
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False, metric_calculations=False),
    )
    return gx.get_context(mode="ephemeral", project_config=config)


def _failing_rows(result: Any) -> tuple[dict[str, list[str]], bool]:
    """Each failing row's id with the expectations it broke (read before redaction)."""
    ids: dict[str, list[str]] = {}
    row_level = True
    for item in result.results:
        if item.success:
            continue
        found = (item.result or {}).get("unexpected_index_list")
        if not found:  # a column-level failure, or the expectation itself errored
            row_level = False
            continue
        cfg = item.expectation_config
        column = cfg.kwargs.get("column")
        what = f"{cfg.type}({column})" if column else cfg.type
        for entry in found:
            if isinstance(entry, Mapping) and entry.get("id") is not None:
                ids.setdefault(str(entry["id"]), []).append(what)
            else:
                row_level = False
    return ids, row_level


def _run_suite(
    context: Any,
    suite_dict: Mapping[str, Any],
    frame: pd.DataFrame,
    parameters: Mapping[str, Any],
    index_columns: list[str],
) -> tuple[Any, Any, dict[str, int]]:
    """Validate ``frame`` without storing anything yet: the result is redacted first.

    (A ValidationDefinition or Checkpoint run would store the raw result, ticket text
    included, before we could touch it.)
    """
    # Deferred: Great Expectations is a heavy import (see the module's docstring).
    import great_expectations as gx
    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.data_context.types.resource_identifiers import (
        ExpectationSuiteIdentifier,
        ValidationResultIdentifier,
    )

    name = suite_dict["name"]
    suite = gx.ExpectationSuite(
        name=name, expectations=suite_dict["expectations"], meta=suite_dict.get("meta")
    )
    if len(suite.expectations) != len(suite_dict["expectations"]):
        raise ConfigError(f"validation suite {name}: some expectations are invalid (see log)")
    suite = context.suites.add(suite)
    order = {e.id: i for i, e in enumerate(suite.expectations)}
    asset = context.data_sources.add_pandas("cca").add_dataframe_asset(name)
    batch = asset.add_batch_definition_whole_dataframe("whole").get_batch(
        batch_parameters={"dataframe": frame}
    )
    # COMPLETE lists every failing row's id, so a few bad tickets can be quarantined alone;
    # the lists are dropped (redact_result) before anything is stored or rendered.
    result_format = {"result_format": "COMPLETE", "unexpected_index_column_names": index_columns}
    result = batch.validate(suite, result_format=result_format, expectation_parameters=parameters)
    run_id = RunIdentifier(run_name=name, run_time=dt.datetime.now(dt.UTC))
    result.meta["run_id"] = run_id
    result.meta["validation_time"] = run_id.run_time
    key = ValidationResultIdentifier(
        expectation_suite_identifier=ExpectationSuiteIdentifier(name=name),
        run_id=run_id,
        batch_identifier=batch.id,
    )
    return result, key, order


def _prune(ge_home: Path, name: str) -> None:
    """Make room so that, with the result about to be stored, ``KEEP_RUNS`` remain.

    Data Docs' index reads every stored result on each build, so an unbounded history would
    make every validation slower. The build deletes pages whose result is gone; the folders
    it leaves empty are removed here on the next run.
    """
    results = ge_home / "validations" / name
    runs = sorted(results.glob("*/*/*.json"), key=lambda p: p.parent.name)
    for old in runs[: max(0, len(runs) - KEEP_RUNS + 1)]:
        old.unlink()
    for root in (results, ge_home / "data_docs" / "validations" / name):
        for folder in sorted(root.glob("*/*"), reverse=True):
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()


def _page(context: Any, key: Any) -> Path:
    """The local path of this run's Data Docs page."""
    urls = context.get_docs_sites_urls(resource_identifier=key, site_name=SITE)
    return Path(unquote(urlparse(urls[0]["site_url"]).path))
