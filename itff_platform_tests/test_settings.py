import pytest
from pydantic import ValidationError

from itff_platform.settings import Settings


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
