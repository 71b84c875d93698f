from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest

from itff_platform.contracts.signals import signal_names
from itff_platform.monitoring.drift import feature_drift
from itff_platform.monitoring.plots import (
    drift_plot,
    embed_png,
    live_equity_plot,
    live_reliability_plot,
    regime_mix_plot,
)
from itff_platform.monitoring.quality import (
    BACKTEST_METRICS,
    in_window,
    live_quality,
    live_quality_for,
    quality_degradation,
)
from itff_platform.training.backtest import backtest

FEES_BPS = 10.0
COST = 2 * FEES_BPS / 1e4
AS_OF = datetime(2024, 9, 30, tzinfo=UTC)
SCHEMA = {
    "symbol": pl.String,
    "target": pl.String,
    "regime": pl.String,
    "prob_up": pl.Float64,
    "signal": pl.String,
    "label": pl.Int8,
    "forward_return": pl.Float64,
    "p50": pl.Float64,
    "close": pl.Float64,
}


def dated(frame: pl.DataFrame, version: str = "1", start: datetime = AS_OF - timedelta(days=2)) -> pl.DataFrame:
    """The log's columns a realized frame also carries: the version, the bar (hourly from `start`), the latency."""
    return frame.with_columns(
        model_version=pl.lit(version),
        latency_ms=pl.int_range(1, frame.height + 1).cast(pl.Float64),
        bar_time=pl.datetime_range(
            start, start + timedelta(hours=max(frame.height - 1, 0)), "1h", time_zone="UTC", eager=True
        )[: frame.height]
        if frame.height
        else pl.lit(None, pl.Datetime("us", "UTC")),
    )


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
    return dated(pl.DataFrame(rows, schema=SCHEMA, orient="row"))


def _row(quality: pl.DataFrame, target: str, scope: str, version: str = "1") -> dict:
    rows = quality.filter(
        pl.col("target") == target, pl.col("scope") == scope, pl.col("model_version") == version
    ).to_dicts()
    assert len(rows) == 1
    return rows[0]


def test_live_quality_classification_by_hand(realized):
    quality = live_quality(realized, FEES_BPS)
    assert quality.columns == [
        "symbol",
        "target",
        "model_version",
        "scope",
        "n",
        "trades",
        "hit_rate",
        "profit_factor",
        "max_drawdown",
        "mean_trade_return_after_fees",
        "latency_p95_ms",
        "brier",
        "log_loss",
        "ece",
        "mape",
        *BACKTEST_METRICS,
        "last_bar",
    ]
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
    few = quality_degradation({"n": settings.monitoring.min_live_outcomes - 1, "log_loss": 2.0}, expected, settings)
    assert few["status"] == "insufficient" and few["n"] == settings.monitoring.min_live_outcomes - 1
    n = settings.monitoring.min_live_outcomes
    worse = quality_degradation(
        {"n": n, "log_loss": 0.69 + settings.monitoring.quality_log_loss_error + 0.01}, expected, settings
    )
    assert worse["status"] == "error" and worse["delta_log_loss"] == pytest.approx(
        settings.monitoring.quality_log_loss_error + 0.01
    )
    middling = (settings.monitoring.quality_log_loss_warn + settings.monitoring.quality_log_loss_error) / 2
    assert quality_degradation({"n": n, "log_loss": 0.69 + middling}, expected, settings)["status"] == "warn"
    assert quality_degradation({"n": n, "log_loss": 0.60}, expected, settings)["status"] == "ok"
    assert quality_degradation({"n": n, "log_loss": None}, expected, settings)["status"] == "insufficient"


def test_quality_degradation_takes_a_live_quality_row(realized, settings):
    row = _row(live_quality(realized, FEES_BPS), "direction", "all")
    assert quality_degradation(row, {"log_loss": 0.5}, settings)["status"] == "insufficient"  # 4 outcomes only


def served(
    prob: np.ndarray, forward_return: np.ndarray, version: str, start: datetime, threshold: float = 0.55
) -> pl.DataFrame:
    """A version's realized direction predictions, one per hourly bar, with the signals the threshold rule gives."""
    n = len(prob)
    frame = pl.DataFrame(
        {
            "symbol": "BTCUSDT",
            "target": "direction",
            "regime": ["trending_up", "volatile"] * (n // 2) + ["neutral"] * (n % 2),
            "prob_up": prob,
            "signal": signal_names(prob, threshold, "direction"),
            "label": (forward_return > 0).astype(np.int8),
            "forward_return": forward_return,
            "p50": None,
            "close": 100.0,
        },
        schema=SCHEMA,
    )
    return dated(frame, version, start)


def test_live_trading_figures_follow_the_backtest_conventions_per_version():
    """Hit rate, profit factor and drawdown after fees, trading every `horizon` predictions: what
    training/backtest.py computes on the same probabilities and returns."""
    rng = np.random.default_rng(5)
    prob, move = rng.uniform(0.2, 0.8, 200), rng.normal(0, 0.01, 200)
    realized = pl.concat(
        [
            served(prob, move, "3", AS_OF - timedelta(days=20)),
            served(prob[:40], -move[:40], "4", AS_OF - timedelta(days=5)),
        ]
    )
    quality = live_quality(realized, FEES_BPS, horizon=4)
    expected = backtest(prob, move, 0.55, FEES_BPS, horizon=4, periods_per_year=8760).metrics
    old = _row(quality, "direction", "all", "3")
    assert old["n"] == 200 and old["trades"] == expected["trades"] > 10
    assert old["hit_rate"] == pytest.approx(expected["hit_rate_trades"])
    assert old["profit_factor"] == pytest.approx(expected["profit_factor"])
    assert old["max_drawdown"] == pytest.approx(expected["max_drawdown"]) and old["max_drawdown"] > 0
    assert old["latency_p95_ms"] == pytest.approx(np.quantile(np.arange(1, 201), 0.95))
    new = _row(quality, "direction", "all", "4")  # the same bars, another version: its own figures
    assert (
        new["n"] == 40 and new["trades"] == backtest(prob[:40], -move[:40], 0.55, FEES_BPS, 4, 8760).metrics["trades"]
    )
    # Regime rows count the version's scheduled trades taken in that regime.
    regimes = quality.filter(pl.col("model_version") == "3", pl.col("scope") != "all")
    assert regimes["n"].sum() == 200 and regimes["trades"].sum() == old["trades"]
    # The most recently serving version comes last: what a reader keyed by (symbol, target) sees.
    assert quality.filter(pl.col("scope") == "all")["model_version"].to_list() == ["3", "4"]


def test_only_the_window_before_as_of_is_judged():
    realized = pl.concat(
        [
            served(np.full(48, 0.7), np.full(48, 0.01), "1", AS_OF - timedelta(days=45)),
            served(np.full(48, 0.7), np.full(48, -0.01), "2", AS_OF - timedelta(days=3)),
        ]
    )
    recent = in_window(realized, AS_OF, 30)
    assert recent["model_version"].unique().to_list() == ["2"] and recent.height == 48
    assert in_window(realized, AS_OF - timedelta(days=40), 30)["model_version"].unique().to_list() == ["1"]


def test_live_quality_for_sets_each_version_beside_its_own_backtest(tmp_path):
    import mlflow
    from itff_platform.monitoring.outcomes import read_quality_summary, write_quality_summary
    from itff_platform.settings import Settings
    from mlflow import MlflowClient

    settings = Settings(home=tmp_path, label_horizon=2)
    client = MlflowClient(settings.tracking_uri)
    client.create_registered_model("itff-BTCUSDT-direction")
    promised = {}
    for hit_rate in (0.61, 0.52):  # versions 1 and 2, each registered by its own run
        run = client.create_run(
            client.create_experiment(f"e{hit_rate}", artifact_location=settings.artifact_location)
        ).info.run_id
        for name, value in zip(BACKTEST_METRICS, (hit_rate, 2 * hit_rate, hit_rate / 10)):
            client.log_metric(run, name, value)
        version = client.create_model_version("itff-BTCUSDT-direction", f"runs:/{run}/model", run_id=run).version
        promised[str(version)] = hit_rate
    mlflow.set_tracking_uri(None)
    rng = np.random.default_rng(1)
    realized = pl.concat(
        [
            served(rng.uniform(0.3, 0.7, 96), rng.normal(0, 0.01, 96), "1", AS_OF - timedelta(days=40)),
            served(rng.uniform(0.3, 0.7, 96), rng.normal(0, 0.01, 96), "1", AS_OF - timedelta(days=9)),
            served(rng.uniform(0.3, 0.7, 96), rng.normal(0, 0.01, 96), "2", AS_OF - timedelta(days=4)),
        ]
    )
    quality = live_quality_for(settings, realized, AS_OF)
    overall = quality.filter(pl.col("scope") == "all")
    assert overall["model_version"].to_list() == ["1", "2"] and overall["n"].to_list() == [
        96,
        96,
    ]  # 40 days ago: outside
    for row in overall.iter_rows(named=True):
        assert row["backtest_hit_rate_trades"] == pytest.approx(promised[row["model_version"]])
        assert row["backtest_profit_factor"] == pytest.approx(2 * promised[row["model_version"]])
    assert quality.filter(pl.col("scope") != "all")["backtest_hit_rate_trades"].is_null().all()

    write_quality_summary(settings, quality)
    gauge = {row["metric"]: row["value"] for row in read_quality_summary(settings)}
    assert gauge["n"] == 96 and gauge["hit_rate"] == pytest.approx(_row(quality, "direction", "all", "2")["hit_rate"])
    assert {"profit_factor", "max_drawdown", "latency_p95_ms"} <= set(gauge)


def _is_png(path) -> bool:
    return path.exists() and path.stat().st_size > 1000 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plots_are_written(tmp_path, settings):
    rng = np.random.default_rng(3)
    reference = pl.DataFrame({"a": rng.normal(size=500), "b": rng.normal(size=500)})
    recent = pl.DataFrame({"a": rng.normal(size=500), "b": rng.normal(loc=1, size=500)})
    drift = feature_drift(reference, recent, ["a", "b"], settings)
    assert _is_png(
        drift_plot(
            drift,
            "drift",
            tmp_path / "drift.png",
            settings.monitoring.drift_psi_warn,
            settings.monitoring.drift_psi_error,
        )
    )
    assert _is_png(
        regime_mix_plot(
            {"range_bound": 0.8, "volatile": 0.2}, {"range_bound": 0.1, "volatile": 0.9}, "mix", tmp_path / "mix.png"
        )
    )

    n = 200
    prob = rng.random(n)
    start = datetime(2024, 9, 1, tzinfo=UTC)
    realized = pl.DataFrame(
        {
            "bar_time": [start + timedelta(hours=i) for i in range(n)],
            "symbol": "BTCUSDT",
            "target": "direction",
            "regime": "neutral",
            "prob_up": prob,
            "signal": np.where(prob > 0.6, "long", np.where(prob < 0.4, "short", "flat")),
            "label": (rng.random(n) < prob).astype(int),
            "forward_return": rng.normal(scale=0.01, size=n),
            "p50": None,
            "close": 100.0,
        }
    )
    assert _is_png(live_reliability_plot(realized, "live calibration", tmp_path / "reliability.png"))
    assert _is_png(live_equity_plot(realized, FEES_BPS, "live equity", tmp_path / "equity.png", horizon=4))

    markdown = embed_png(tmp_path / "mix.png", "regime mix")
    assert markdown.startswith("![regime mix](data:image/png;base64,iVBORw0KGgo") and markdown.endswith(")")
    assert embed_png(tmp_path / "mix.png").startswith("![mix](")


def test_consensus_answers_are_scored_per_ensemble_and_kept_out_of_the_champions_gauge(tmp_path):
    """/consensus logs its answers under the ensemble's id, not a registry version: live quality groups them by
    that id, looks for no backtest of theirs in the registry, and the champion's gauge still shows the champion."""
    from itff_platform.monitoring.outcomes import read_quality_summary, write_quality_summary
    from itff_platform.monitoring.quality import version_backtests
    from itff_platform.settings import Settings

    settings = Settings(home=tmp_path)
    rng = np.random.default_rng(2)
    ensemble = "ensemble-0123456789ab"
    realized = pl.concat(
        [
            served(rng.uniform(0.3, 0.7, 48), rng.normal(0, 0.01, 48), "2", AS_OF - timedelta(days=5)),
            # The ensemble answered last: the gauge must not take it for the serving version.
            served(rng.uniform(0.3, 0.7, 48), rng.normal(0, 0.01, 48), ensemble, AS_OF - timedelta(days=3)),
        ]
    )
    backtests = version_backtests(settings, realized.filter(pl.col("model_version") == ensemble))
    assert backtests.height == 1 and all(backtests[m].is_null().all() for m in BACKTEST_METRICS)
    assert not (settings.tracking.mlflow_dir / "mlflow.db").exists()  # the registry was not asked
    quality = live_quality(realized, FEES_BPS, backtest=backtests)
    assert sorted(quality.filter(pl.col("scope") == "all")["model_version"].to_list()) == ["2", ensemble]
    assert _row(quality, "direction", "all", ensemble)["n"] == 48
    write_quality_summary(settings, quality)
    gauge = {row["metric"]: row["value"] for row in read_quality_summary(settings)}
    assert gauge["hit_rate"] == pytest.approx(_row(quality, "direction", "all", "2")["hit_rate"])


def test_drift_monitors_psi_and_ks_reach_the_services_gauge_rows(settings):
    """drift_monitor writes each symbol and feature's PSI and KS for the service's itff_feature_drift gauge, so
    Grafana's drift panel has data; a statistic that could not be computed is left out, not faked."""
    from itff_platform.monitoring.outcomes import read_drift_summary, write_drift_summary

    drift = pl.DataFrame(
        {"symbol": ["BTCUSDT", "BTCUSDT"], "feature": ["rsi", "atr_pct"], "psi": [0.31, None], "ks": [0.12, 0.05]}
    )
    write_drift_summary(settings, drift)
    rows = {(r["feature"], r["statistic"]): r["value"] for r in read_drift_summary(settings)}
    assert rows == {("rsi", "psi"): 0.31, ("rsi", "ks"): 0.12, ("atr_pct", "ks"): 0.05}
    write_drift_summary(settings, pl.DataFrame())  # no champion yet: no training window, no rows
    assert read_drift_summary(settings) == []
