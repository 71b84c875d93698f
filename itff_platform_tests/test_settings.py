import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import ValidationError

from itff_platform.rules import next_month
from itff_platform.settings import LEAVES, Settings


def test_every_setting_has_a_working_default(tmp_path):
    settings = Settings(home=tmp_path)
    assert settings.source == "sample"
    assert settings.symbols == ["BTCUSDT", "ETHUSDT"]
    assert settings.lake.root == tmp_path / "data_lake"
    assert settings.interval_seconds == 3600 and settings.bars_per_day == 24


def test_environment_overrides_with_the_itff_prefix(monkeypatch):
    monkeypatch.setenv("ITFF_SYMBOLS", '["solusdt"]')
    monkeypatch.setenv("ITFF_INTERVAL", "15m")
    monkeypatch.setenv("ITFF_LABEL_HORIZON", "8")
    settings = Settings()
    assert settings.symbols == ["SOLUSDT"]
    assert settings.interval_seconds == 900
    assert settings.features.label_horizon == 8


def test_a_bad_value_names_the_field_and_the_rule():
    with pytest.raises(ValidationError, match="interval: '7m' is not one of"):
        Settings(interval="7m")
    with pytest.raises(ValidationError, match="label_horizon"):
        Settings(label_horizon=0)


def test_every_field_has_a_flat_and_a_path_environment_name_and_the_path_wins(monkeypatch, tmp_path):
    monkeypatch.setenv("ITFF_TRIALS", "7")  # flat names from before the sections, renamed fields included
    monkeypatch.setenv("ITFF_LAKE_DIR", str(tmp_path / "lake"))
    monkeypatch.setenv("ITFF_PROMOTION_ALPHA", "0.01")
    monkeypatch.setenv("ITFF_SERVE_WORKERS", "3")
    monkeypatch.setenv("ITFF_AUTOMATION_ON", "true")
    monkeypatch.setenv("ITFF_API_TOKENS", '["tok-1"]')
    monkeypatch.setenv("ITFF_BINANCE_BASE_URL", "http://binance.test")
    monkeypatch.setenv("ITFF_TORCH_TRIALS", "9")  # both forms: the path wins
    monkeypatch.setenv("ITFF_TRAINING__TORCH_TRIALS", "5")
    monkeypatch.setenv("ITFF_MONITORING__DRIFT_COOLDOWN_DAYS", "3")
    settings = Settings(home=tmp_path)
    assert (settings.training.trials, settings.training.torch_trials, settings.monitoring.drift_cooldown_days) == (
        7,
        5,
        3,
    )
    assert (
        settings.lake.root == tmp_path / "lake" and settings.promotion.alpha == 0.01 and settings.serving.workers == 3
    )
    assert settings.automation.enabled and [t.get_secret_value() for t in settings.serving.api_tokens] == ["tok-1"]
    assert settings.sources.binance.base_url == "http://binance.test"
    assert Settings(home=tmp_path, trials=2).training.trials == 2  # a keyword beats the environment


def test_flat_keywords_and_copies_reach_their_sections(tmp_path):
    settings = Settings(home=tmp_path, trials=4, lake_dir="lake", training={"seed": 1}, drop_dir=tmp_path / "drop")
    assert (settings.training.trials, settings.training.seed) == (4, 1)
    assert settings.lake.root == tmp_path / "lake" and settings.sources.files.drop_dir == tmp_path / "drop"
    copy = settings.model_copy(update={"calibration_rows": 0, "promotion": {"max_ece": 0.5}})
    assert copy.training.calibration_rows == 0 and copy.training.trials == 4  # the rest of the section is kept
    assert copy.promotion.max_ece == 0.5 and copy.promotion.alpha == settings.promotion.alpha
    assert settings.training.calibration_rows == 2000  # the original is untouched


def test_every_flat_name_in_the_repository_is_still_a_setting():
    """Makefile, scripts, benchmarks, docs and tests set ITFF_<NAME>: each must still reach a field."""
    root = Path(__file__).resolve().parents[1]
    known = {name for leaf in LEAVES.values() for name in leaf.env_names}
    files = [
        root / "Makefile",
        *root.glob("scripts/*"),
        *root.glob("docs/*.md"),
        *root.glob("benchmarks/**/*.py"),
        *root.glob("itff_platform_tests/**/*.py"),
    ]
    used = {
        name
        for path in files
        if path.is_file()
        for name in re.findall(r"\bITFF_[A-Z][A-Z0-9_]*[A-Z0-9]\b", path.read_text())
    }
    # ITFF_TEST_: hooks only tests set (the pause in an order, between its intent and its fill).
    not_settings = {name for name in used if name.startswith(("ITFF_FUZZ_", "ITFF_BENCH_", "ITFF_DEV_", "ITFF_TEST_"))}
    assert used - not_settings - known == set()


def test_every_setting_is_described():
    assert [name for name, leaf in LEAVES.items() if not (leaf.info.description or "").strip()] == []


def test_the_sample_end_date_is_the_month_after_the_packaged_data():
    from itff_platform.market.sample import SAMPLE_INTERVAL, SampleCandleSource, sample_symbols

    far = datetime(2100, 1, 1, tzinfo=UTC)
    last = max(
        SampleCandleSource().fetch(symbol, SAMPLE_INTERVAL, datetime(2000, 1, 1, tzinfo=UTC), far)["timestamp"].max()
        for symbol in sample_symbols()
    )
    assert Settings().sources.sample.end_date == next_month(last.date())
    assert Settings(source="sample").effective_end_date() == next_month(last.date())


def test_docs_configuration_md_is_generated_from_the_schema():
    from itff_platform.settings_docs import DOC, REGENERATE, render

    assert DOC.is_file() and DOC.read_text() == render(), f"docs/configuration.md is out of date: run {REGENERATE}"
