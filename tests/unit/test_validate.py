"""Great Expectations suites: good data passes, each kind of bad data fails by name."""

from __future__ import annotations

import json
import logging

import pandas as pd
import pytest

from cca.errors import ConfigError
from cca.settings import Settings
from pipelines import validate
from pipelines.validate import (
    ValidationFailed,
    ValidationReport,
    validate_clean,
    validate_raw,
    validate_training_set,
)
from pipelines.validation_suites import training_frame

LABELS = ["card_arrival", "lost_or_stolen_card", "refund"]


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(home=tmp_path)


def raw_tickets(n: int = 6) -> pd.DataFrame:
    return pd.DataFrame({
        "id": [f"t{i}" for i in range(n)],
        "source": "zendesk",
        "subject": ["Card", None] * (n // 2),
        "body": [f"My card number {i} has not arrived yet" for i in range(n)],
        "created_at": pd.Timestamp("2026-01-05 09:30", tz="Europe/London"),
        "label": ["card_arrival", None] * (n // 2),
    })


def clean_tickets(n: int = 6) -> pd.DataFrame:
    return pd.DataFrame({
        "id": [f"t{i}" for i in range(n)],
        "clean_subject": ["Card for <PERSON>", None] * (n // 2),
        "clean_body": [f"Mail <EMAIL>, card <CARD>, on 2024-01-15 paid £1,000.{i}"
                       for i in range(n)],
        "label": ["refund", None] * (n // 2),
    })


def training(per_class: int = 8, holdout_per_class: int = 2) -> tuple[pd.DataFrame, pd.DataFrame]:
    def rows(prefix: str, n: int) -> pd.DataFrame:
        return pd.DataFrame([
            {"id": f"{prefix}-{label}-{i}", "text": f"{prefix} ticket {i} about {label}",
             "label": label}
            for label in LABELS for i in range(n)
        ])
    return rows("train", per_class), rows("holdout", holdout_per_class)


def failure(excinfo: pytest.ExceptionInfo[ValidationFailed]) -> str:
    return "\n".join(excinfo.value.report.failed)


def test_good_raw_tickets_pass_and_data_docs_page_exists(settings):
    report = validate_raw(raw_tickets(), settings)
    assert isinstance(report, ValidationReport)
    assert report.success and report.failed == [] and report.evaluated == 6
    assert report.data_docs.is_file() and report.data_docs.suffix == ".html"
    assert report.data_docs.is_relative_to(settings.ge_home)
    assert (settings.ge_home / "data_docs" / "index.html").is_file()


def test_null_body_fails_and_names_the_page(settings):
    df = raw_tickets()
    df.loc[2, "body"] = None
    with pytest.raises(ValidationFailed) as excinfo:
        validate_raw(df, settings)
    report = excinfo.value.report
    assert not report.success and report.suite == "raw_tickets"
    assert "expect_column_values_to_not_be_null(body): 1 of 6 rows, e.g. id=t2" in report.failed
    message = str(excinfo.value)
    assert "raw_tickets" in message and str(report.data_docs) in message
    assert "\n" not in message
    assert report.data_docs.is_file()
    assert excinfo.value.exit_code == 2


def test_too_short_body_and_naive_timestamp_fail(settings):
    df = raw_tickets()
    df.loc[4, "body"] = "x"
    df.loc[4, "subject"] = ""
    df["created_at"] = pd.Timestamp("2026-01-05 09:30")  # no time zone
    with pytest.raises(ValidationFailed) as excinfo:
        validate_raw(df, settings)
    text = failure(excinfo)
    assert "expect_column_values_to_be_between(text_chars): 1 of 6 rows" in text
    assert "expect_column_values_to_be_in_set(created_at_naive)" in text
    assert excinfo.value.report.row_level and "t4" in excinfo.value.report.failing_ids


def test_subject_only_ticket_passes_and_future_date_fails_that_row(settings):
    df = raw_tickets()
    df.loc[1, "body"] = ""
    df.loc[1, "subject"] = "Card blocked at the ATM"
    df.loc[2, "created_at"] = pd.Timestamp.now(tz="UTC") + pd.Timedelta(days=30)
    with pytest.raises(ValidationFailed) as excinfo:
        validate_raw(df, settings)
    report = excinfo.value.report
    assert "expect_column_values_to_be_in_set(created_in_future)" in failure(excinfo)
    assert report.row_level and report.failing_ids == ["t2"]


def test_missing_column_fails_on_schema(settings):
    with pytest.raises(ValidationFailed) as excinfo:
        validate_raw(raw_tickets().drop(columns=["source"]), settings)
    text = failure(excinfo)
    assert "expect_table_columns_to_match_set: missing ['source']" in text
    assert "expect_column_values_to_not_be_null(source): error: " in text


def test_clean_tickets_with_placeholders_pass(settings):
    assert validate_clean(clean_tickets(), settings).success


@pytest.mark.parametrize(("leak", "pattern"), [
    ("write to jo.bloggs@example.co.uk", "email"),
    ("card 4111 1111 1111 1111 lost", "card_number"),
    ("card 4111-1111-1111-1111 lost", "card_number"),
    ("ring 020 7946 0958 after six", "phone"),
    ("pay to GB29 NWBK 6016 1331 9268 19", "iban"),
    ("call me on +44 20 7946 0958", "phone"),
    ("logged in from 192.168.10.1", "ipv4"),
])
def test_pii_left_in_clean_text_fails_without_echoing_it(settings, leak, pattern):
    df = clean_tickets()
    df.loc[3, "clean_body"] = f"Hello, {leak} thanks"
    with pytest.raises(ValidationFailed) as excinfo:
        validate_clean(df, settings)
    text = failure(excinfo)
    column = "card_number_left" if pattern == "card_number" else "clean_body"
    assert f"({column}, {pattern}): 1 of 6 rows, e.g. " in text
    assert leak not in str(excinfo.value) and leak not in text
    # the stored page names the row, not the leaked text
    assert leak not in excinfo.value.report.data_docs.read_text(encoding="utf-8")


def test_card_number_in_subject_fails(settings):
    df = clean_tickets()
    df.loc[0, "clean_subject"] = "card 5555 5555 5555 4444"
    with pytest.raises(ValidationFailed) as excinfo:
        validate_clean(df, settings)
    assert "(card_number_left, card_number): 1 of 6 rows, e.g. True (id=t0)" in failure(excinfo)


def test_numbers_that_are_not_pii_pass(settings):
    df = clean_tickets()
    df.loc[0, "clean_body"] = "Order 4111111111111112 (fails Luhn), ref 12345678, on 2024-01-15"
    df.loc[1, "clean_body"] = "Transfer 1234567 of £1,000 at 10:30, app version 4.12.1"
    assert validate_clean(df, settings).success


def test_pii_in_clean_subject_fails(settings):
    df = clean_tickets()
    df.loc[0, "clean_subject"] = "from a.person@example.com"
    with pytest.raises(ValidationFailed) as excinfo:
        validate_clean(df, settings)
    assert "expect_column_values_to_not_match_regex(clean_subject, email)" in failure(excinfo)


def test_good_training_set_passes(settings):
    train, holdout = training()
    report = validate_training_set(train, holdout, LABELS, settings)
    assert report.success and report.evaluated == len(train) + len(holdout)
    assert report.data_docs.is_file()


def test_unknown_label_fails(settings):
    train, holdout = training()
    holdout.loc[0, "label"] = "teleport_money"
    with pytest.raises(ValidationFailed) as excinfo:
        validate_training_set(train, holdout, LABELS, settings)
    assert "expect_column_values_to_be_in_set(label): 1 of 30 rows, e.g. 'teleport_money'" in (
        failure(excinfo))


def test_null_label_and_short_text_fail(settings):
    train, holdout = training()
    train.loc[1, "label"] = None
    train.loc[2, "text"] = "?"
    with pytest.raises(ValidationFailed) as excinfo:
        validate_training_set(train, holdout, LABELS, settings)
    text = failure(excinfo)
    assert "expect_column_values_to_not_be_null(label): 1 of 30 rows" in text
    assert "expect_column_value_lengths_to_be_between(text): 1 of 30 rows, e.g. id=" in text


def test_id_overlap_between_train_and_holdout_fails(settings):
    train, holdout = training()
    holdout.loc[0, "id"] = train.loc[0, "id"]
    with pytest.raises(ValidationFailed) as excinfo:
        validate_training_set(train, holdout, LABELS, settings)
    assert "expect_column_values_to_be_null(id_also_in_train): 1 of 30 rows" in failure(excinfo)


def test_identical_text_overlap_fails(settings):
    train, holdout = training()
    holdout.loc[0, "text"] = "  " + train.loc[5, "text"].replace(" ", "\n", 1)
    with pytest.raises(ValidationFailed) as excinfo:
        validate_training_set(train, holdout, LABELS, settings)
    expected = f"expect_column_values_to_be_null(train_id_with_same_text): 1 of 30 rows, e.g. " \
               f"'{train.loc[5, 'id']}'"
    assert expected in failure(excinfo)


def test_class_below_minimum_fails_naming_the_label(settings):
    train, holdout = training()
    train = train.drop(train.index[(train.label == "refund")][3:])  # 3 left, minimum 5
    with pytest.raises(ValidationFailed) as excinfo:
        validate_training_set(train, holdout, LABELS, settings)
    assert "expect_column_values_to_be_between(train_rows_of_label): 5 of 25 rows, e.g. refund: 3" \
        in failure(excinfo)


def test_imbalance_fails(tmp_path):
    settings = Settings(home=tmp_path, train_max_class_ratio=3.0)
    train, holdout = training(per_class=6)
    big = pd.DataFrame({"id": [f"big-{i}" for i in range(20)],
                        "text": [f"where is my card {i}" for i in range(20)],
                        "label": "card_arrival"})
    with pytest.raises(ValidationFailed) as excinfo:
        validate_training_set(pd.concat([train, big]), holdout, LABELS, settings)
    text = failure(excinfo)
    assert "expect_column_values_to_be_between(largest_class_ratio)" in text
    assert "refund: 4.333" in text and "card_arrival" not in text.split("largest_class_ratio")[1]


def test_holdout_class_missing_from_train_fails(settings):
    train, holdout = training()
    train = train[train.label != "refund"]
    with pytest.raises(ValidationFailed) as excinfo:
        validate_training_set(train, holdout, LABELS, settings)
    assert "train_rows_of_label): 2 of 22 rows, e.g. refund: 0" in failure(excinfo)


def test_training_frame_derivations():
    train, holdout = training(per_class=6, holdout_per_class=1)
    holdout.loc[0, "id"] = train.loc[0, "id"]
    frame = training_frame(train, holdout)
    assert list(frame.split.value_counts().sort_index()) == [3, 18]
    assert set(frame.train_rows_of_label) == {6}
    assert set(frame.largest_class_ratio) == {1.0}
    assert frame.id_also_in_train.notna().sum() == 1
    assert frame.loc[frame.split == "train", "id_also_in_train"].isna().all()


def test_results_and_docs_stay_out_of_the_repo(settings):
    before = sorted(p.name for p in settings.ge_suites_dir.iterdir())
    validate_clean(clean_tickets(), settings)
    assert sorted(p.name for p in settings.ge_suites_dir.iterdir()) == before
    assert (settings.ge_home / "validations").is_dir()


def test_old_results_and_pages_are_pruned(settings, monkeypatch):
    monkeypatch.setattr(validate, "KEEP_RUNS", 2)
    pages = [validate_clean(clean_tickets(), settings).data_docs for _ in range(3)]
    stored = list((settings.ge_home / "validations" / "clean_tickets").glob("*/*/*.json"))
    assert len(stored) == 2
    assert [p.is_file() for p in pages] == [False, True, True]
    validate_clean(clean_tickets(), settings)
    assert not pages[0].parent.exists() and not pages[1].is_file()


def test_broken_suite_is_a_config_error_not_a_silent_pass(tmp_path):
    suites = tmp_path / "suites"
    suites.mkdir()
    bad = {"name": "clean_tickets", "expectations": [
        {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "id"}},
        {"type": "expect_no_such_thing", "kwargs": {"column": "id"}},
    ]}
    (suites / "clean_tickets.json").write_text(json.dumps(bad), encoding="utf-8")
    with pytest.raises(ConfigError, match="clean_tickets"):
        validate_clean(clean_tickets(), Settings(home=tmp_path, ge_suites_dir=suites))


def test_great_expectations_logs_are_quiet():
    assert logging.getLogger("great_expectations").getEffectiveLevel() >= logging.WARNING
