from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from itff_platform.monitoring.drift import category_psi, feature_drift, grade, ks_statistic, psi, regime_shift, worst


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(7)


def test_same_distribution_is_stable(rng):
    a, b = rng.normal(size=5000), rng.normal(size=5000)
    assert 0 <= psi(a, b) < 0.02
    assert ks_statistic(a, b) < 0.05


def test_one_sd_mean_shift_is_an_error(rng, settings):
    a, b = rng.normal(size=5000), rng.normal(loc=1.0, size=5000)
    assert psi(a, b) > 0.25
    assert ks_statistic(a, b) > 0.3
    assert grade(psi(a, b), settings.monitoring.drift_psi_warn, settings.monitoring.drift_psi_error) == "error"


def test_grade_and_worst():
    assert [grade(v, 0.1, 0.25) for v in (0.05, 0.1, 0.2, 0.25, 3.0, float("nan"))] == [
        "ok",
        "warn",
        "warn",
        "error",
        "error",
        "ok",
    ]
    assert worst("ok", "error", "warn") == "error"
    assert worst("ok", "ok") == "ok"


def test_psi_symmetric_ish_and_finite_with_empty_bins(rng):
    a, b = rng.normal(size=5000), rng.normal(loc=0.5, size=5000)
    forward, backward = psi(a, b), psi(b, a)
    assert forward == pytest.approx(backward, rel=0.3)
    # Every recent value beyond the reference's top decile: nine empty bins, still a finite (and huge) number.
    beyond = psi(a, a.max() + 1 + rng.random(1000))
    assert np.isfinite(beyond) and beyond > 5


def test_psi_drops_nans_and_reports_nothing_to_compare(rng):
    a = rng.normal(size=2000)
    with_gaps = np.where(rng.random(2000) < 0.2, np.nan, a)
    assert psi(a, with_gaps) < 0.02
    assert np.isnan(psi(a, np.full(10, np.nan)))
    assert np.isnan(ks_statistic(np.array([]), a))


def test_constant_feature_does_not_crash(rng):
    constant = np.full(1000, 3.0)
    assert psi(constant, constant) == pytest.approx(0.0)
    assert ks_statistic(constant, constant) == pytest.approx(0.0)
    moved = psi(constant, rng.normal(loc=3.0, size=1000))
    assert np.isfinite(moved) and moved > 0.25


def test_category_psi():
    mix = ["range_bound"] * 6 + ["volatile"] * 3 + ["trending_up"]
    cats = ["trending_up", "range_bound", "volatile", "neutral"]
    assert category_psi(mix, list(reversed(mix)), cats) == 0.0
    assert category_psi(mix, ["volatile"] * 10, cats) > 0.25


def test_regime_shift_flags_range_bound_to_volatile(settings):
    before = pl.Series(["range_bound"] * 80 + ["trending_up"] * 10 + ["volatile"] * 10)
    after = pl.Series(["range_bound"] * 10 + ["trending_up"] * 10 + ["volatile"] * 80)
    shift = regime_shift(before, after, settings)
    assert shift["status"] == "error" and shift["psi"] > settings.monitoring.regime_shift_error
    assert shift["reference_shares"]["range_bound"] == pytest.approx(0.8)
    assert shift["recent_shares"]["volatile"] == pytest.approx(0.8)
    assert sum(shift["recent_shares"].values()) == pytest.approx(1.0)
    assert shift["recent_shares"]["neutral"] == 0.0  # every known regime listed, for the plot
    same = regime_shift(before, before.shuffle(seed=1), settings)
    assert same["psi"] == 0.0 and same["status"] == "ok"


def test_feature_drift_frame(rng, settings):
    n = 3000
    reference = pl.DataFrame(
        {"steady": rng.normal(size=n), "shifted": rng.normal(size=n), "wider": rng.normal(size=n), "flat": np.zeros(n)}
    )
    recent = pl.DataFrame(
        {
            "steady": rng.normal(size=n),
            "shifted": rng.normal(loc=1.0, size=n),
            "wider": rng.normal(scale=1.4, size=n),
            "flat": np.zeros(n),
        }
    )
    drift = feature_drift(reference, recent, ["steady", "shifted", "wider", "flat"], settings)
    assert drift.columns == [
        "feature",
        "psi",
        "ks",
        "psi_warn",
        "psi_threshold",
        "ks_warn",
        "ks_threshold",
        "calibration_windows",
        "psi_status",
        "ks_status",
        "status",
    ]
    # No thresholds given: every feature is graded by the settings' fixed ones, calibrated on no window.
    assert set(drift["psi_threshold"]) == {settings.monitoring.drift_psi_error} and set(
        drift["calibration_windows"]
    ) == {0}
    assert drift["feature"][0] == "shifted"
    assert drift["psi"].to_list() == sorted(drift["psi"].to_list(), reverse=True)
    status = dict(drift.select("feature", "status").iter_rows())
    assert status["shifted"] == "error" and status["steady"] == "ok" and status["flat"] == "ok"
    assert status["wider"] in ("warn", "error")


def test_feature_drift_with_nulls_and_no_features(settings):
    reference = pl.DataFrame({"x": [1.0, 2.0, None, 4.0] * 50})
    recent = pl.DataFrame({"x": [None] * 20}, schema={"x": pl.Float64})
    drift = feature_drift(reference, recent, ["x"], settings)
    assert drift["psi"][0] is None and drift["status"][0] == "ok"
    assert feature_drift(reference, recent, [], settings).height == 0
