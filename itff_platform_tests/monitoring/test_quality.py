from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

import numpy as np
import polars as pl
import pytest

from itff_platform.monitoring.plots import (
    drift_plot,
    embed_png,
    live_equity_plot,
    live_reliability_plot,
    regime_mix_plot,
)
from itff_platform.monitoring.drift import feature_drift
from itff_platform.monitoring.quality import live_quality, quality_degradation

FEES_BPS = 10.0
COST = 2 * FEES_BPS / 1e4
SCHEMA = {"symbol": pl.String, "target": pl.String, "regime": pl.String, "prob_up": pl.Float64, "signal": pl.String,
          "label": pl.Int8, "forward_return": pl.Float64, "p50": pl.Float64, "close": pl.Float64}


@pytest.fixture
def realized() -> pl.DataFrame:
    rows = [
        # direction: hit, miss, hit (short), flat
        ("BTCUSDT", "direction", "trending_up", 0.8, "long", 1, 0.02, None, 100.0),
        ("BTCUSDT", "direction", "trending_up", 0.7, "long", 0, -0.01, None, 100.0),
        ("BTCUSDT", "direction", "range_bound", 0.2, "short", 0, -0.03, None, 100.0),
        ("BTCUSDT", "direction", "range_bound", 0.5, "flat", 1, 0.005, None, 100.0),
        # not yet realized: left out
        ("BTCUSDT", "direction", "range_bound", 0.9, "long", None, None, None, 100.0),
        # forward_return: predicted 110 vs realized 100 (10%), predicted 200 vs realized 250 (20%)
        ("BTCUSDT", "forward_return", "volatile", None, "flat", None, 0.0, math.log(1.1), 100.0),
        ("BTCUSDT", "forward_return", "volatile", None, "flat", None, math.log(1.25), 0.0, 200.0),
    ]
    return pl.DataFrame(rows, schema=SCHEMA, orient="row")


def _row(quality: pl.DataFrame, target: str, scope: str) -> dict:
    rows = quality.filter(pl.col("target") == target, pl.col("scope") == scope).to_dicts()
    assert len(rows) == 1
    return rows[0]


def test_live_quality_classification_by_hand(realized):
    quality = live_quality(realized, FEES_BPS)
    assert quality.columns == ["symbol", "target", "scope", "n", "hit_rate", "brier", "log_loss", "ece", "trades",
                               "mean_trade_return_after_fees", "mape"]
    everything = _row(quality, "direction", "all")
    assert everything["n"] == 4 and everything["trades"] == 3
    assert everything["hit_rate"] == pytest.approx(2 / 3)
    assert everything["brier"] == pytest.approx((0.04 + 0.49 + 0.04 + 0.25) / 4)
    assert everything["log_loss"] == pytest.approx(-(math.log(0.8) + math.log(0.3) + math.log(0.8) + math.log(0.5)) / 4)
    assert everything["ece"] is not None and everything["mape"] is None
    # A short earns log(2 - exp(r)), as in the backtest.
    trades = [0.02 - COST, -0.01 - COST, math.log(2 - math.exp(-0.03)) - COST]
    assert everything["mean_trade_return_after_fees"] == pytest.approx(np.mean(trades))


def test_live_quality_per_regime(realized):
    quality = live_quality(realized, FEES_BPS)
    scopes = quality.filter(pl.col("target") == "direction")["scope"].to_list()
    assert scopes == ["all", "trending_up", "range_bound"]
    up = _row(quality, "direction", "trending_up")
    assert (up["n"], up["trades"], up["hit_rate"]) == (2, 2, 0.5)
    assert up["brier"] == pytest.approx((0.04 + 0.49) / 2)
    ranging = _row(quality, "direction", "range_bound")
    assert (ranging["n"], ranging["trades"], ranging["hit_rate"]) == (2, 1, 1.0)


def test_live_quality_regression_by_hand(realized):
    quality = live_quality(realized, FEES_BPS)
    for scope in ("all", "volatile"):
        row = _row(quality, "forward_return", scope)
        assert row["n"] == 2 and row["trades"] == 0
        assert row["mape"] == pytest.approx(0.15)
        assert row["hit_rate"] is None and row["mean_trade_return_after_fees"] is None
        assert row["brier"] is None and row["log_loss"] is None


def test_live_quality_empty(realized):
    assert live_quality(realized.clear(), FEES_BPS).height == 0


def test_quality_degradation(settings):
    expected = {"log_loss": 0.69}
    few = quality_degradation({"n": settings.min_live_outcomes - 1, "log_loss": 2.0}, expected, settings)
    assert few["status"] == "insufficient" and few["n"] == settings.min_live_outcomes - 1
    n = settings.min_live_outcomes
    worse = quality_degradation({"n": n, "log_loss": 0.69 + settings.quality_log_loss_error + 0.01}, expected, settings)
    assert worse["status"] == "error" and worse["delta_log_loss"] == pytest.approx(settings.quality_log_loss_error + 0.01)
    middling = (settings.quality_log_loss_warn + settings.quality_log_loss_error) / 2
    assert quality_degradation({"n": n, "log_loss": 0.69 + middling}, expected, settings)["status"] == "warn"
    assert quality_degradation({"n": n, "log_loss": 0.60}, expected, settings)["status"] == "ok"
    assert quality_degradation({"n": n, "log_loss": None}, expected, settings)["status"] == "insufficient"


def test_quality_degradation_takes_a_live_quality_row(realized, settings):
    row = _row(live_quality(realized, FEES_BPS), "direction", "all")
    assert quality_degradation(row, {"log_loss": 0.5}, settings)["status"] == "insufficient"  # 4 outcomes only


def _is_png(path) -> bool:
    return path.exists() and path.stat().st_size > 1000 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plots_are_written(tmp_path, settings):
    rng = np.random.default_rng(3)
    reference = pl.DataFrame({"a": rng.normal(size=500), "b": rng.normal(size=500)})
    recent = pl.DataFrame({"a": rng.normal(size=500), "b": rng.normal(loc=1, size=500)})
    drift = feature_drift(reference, recent, ["a", "b"], settings)
    assert _is_png(drift_plot(drift, "drift", tmp_path / "drift.png", settings.drift_psi_warn, settings.drift_psi_error))
    assert _is_png(regime_mix_plot({"range_bound": 0.8, "volatile": 0.2}, {"range_bound": 0.1, "volatile": 0.9},
                                   "mix", tmp_path / "mix.png"))

    n = 200
    prob = rng.random(n)
    start = datetime(2024, 9, 1, tzinfo=timezone.utc)
    realized = pl.DataFrame({
        "bar_time": [start + timedelta(hours=i) for i in range(n)], "symbol": "BTCUSDT", "target": "direction",
        "regime": "neutral", "prob_up": prob, "signal": np.where(prob > 0.6, "long", np.where(prob < 0.4, "short", "flat")),
        "label": (rng.random(n) < prob).astype(int), "forward_return": rng.normal(scale=0.01, size=n),
        "p50": None, "close": 100.0,
    })
    assert _is_png(live_reliability_plot(realized, "live calibration", tmp_path / "reliability.png"))
    assert _is_png(live_equity_plot(realized, FEES_BPS, "live equity", tmp_path / "equity.png", horizon=4))

    markdown = embed_png(tmp_path / "mix.png", "regime mix")
    assert markdown.startswith("![regime mix](data:image/png;base64,iVBORw0KGgo") and markdown.endswith(")")
    assert embed_png(tmp_path / "mix.png").startswith("![mix](")
