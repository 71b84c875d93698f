"""The retrain triggers beside drift, on real live-quality code and a real Delta decisions table: runbook 001's
MAPE above 8 %, runbooks 000/002's weekly precision/recall drift above 5 %, and the cooldown."""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import polars as pl
import pytest

from itff_platform.monitoring.evaluation import (
    Evaluation,
    decide_retraining,
    forget_decisions_from,
    judge_live,
    read_decisions,
    record_decisions,
)
from itff_platform.monitoring.quality import live_quality
from itff_platform.settings import Settings
from itff_platform_tests.conftest import utc

AS_OF = utc(2024, 9, 2)


def realized(
    target: str, signal: list[str], label: list[float | None], version: str = "3", hours_before: int = 6, **columns
) -> pl.DataFrame:
    """Realized predictions of one BTCUSDT model, one per hour, the newest `hours_before` hours before AS_OF."""
    n = len(signal)
    bar_time = [AS_OF - timedelta(hours=hours_before + i) for i in range(n)]
    frame = {
        "symbol": ["BTCUSDT"] * n,
        "target": [target] * n,
        "model_version": [version] * n,
        "bar_time": bar_time,
        "regime": ["range_bound"] * n,
        "signal": signal,
        "label": label,
        "forward_return": [0.001] * n,
        "prob_up": [0.5] * n,
        "threshold": [None] * n,
        "p50": [None] * n,
        "close": [100.0] * n,
        "latency_ms": [5.0] * n,
        **columns,
    }
    return pl.DataFrame(
        frame, schema_overrides={"label": pl.Float64, "p50": pl.Float64, "prob_up": pl.Float64, "threshold": pl.Float64}
    )


def decide(settings: Settings, expectations: dict, rows: pl.DataFrame, as_of: datetime = AS_OF) -> Evaluation:
    quality = live_quality(rows, settings.trading.fees_bps, settings.features.label_horizon)
    result = Evaluation(as_of=as_of, realized=rows, quality=quality, expectations=expectations)
    judge_live(settings, result)
    result.decisions = decide_retraining(settings, result)
    return result


def only(result: Evaluation) -> dict:
    assert result.decisions.height == 1
    return result.decisions.row(0, named=True)


@pytest.fixture
def forward(tmp_path) -> Settings:
    return Settings(home=tmp_path, symbols=["BTCUSDT"], targets=["forward_return"], min_live_outcomes=24)


def forward_rows(mape: float, n: int = 30) -> pl.DataFrame:
    """forward_return outcomes whose predicted price misses the realized one by exactly `mape`."""
    return realized(
        "forward_return", ["flat"] * n, [None] * n, p50=[0.001 + float(np.log1p(mape))] * n, prob_up=[None] * n
    )


FORWARD_CHAMPION = {("BTCUSDT", "forward_return"): {"version": "3", "mape": 0.006}}


def test_forward_return_mape_above_eight_percent_retrains(forward):
    missed = only(decide(forward, FORWARD_CHAMPION, forward_rows(0.10)))
    assert (
        missed["decision"] == "retrain"
        and "live MAPE 10.00% > 8%" in missed["reasons"]
        and "runbook 001" in missed["reasons"]
    )
    assert only(decide(forward, FORWARD_CHAMPION, forward_rows(0.05)))["decision"] == "keep"
    # Too few outcomes to judge: the 10 % miss of 20 predictions is not yet evidence.
    few = decide(forward, FORWARD_CHAMPION, forward_rows(0.10, n=20))
    assert only(few)["decision"] == "keep" and few.degradation[0]["status"] == "insufficient"


def test_the_cooldown_keeps_a_model_sent_for_retraining_until_it_ends(forward):
    first = decide(forward, FORWARD_CHAMPION, forward_rows(0.10))
    assert only(first)["decision"] == "retrain"
    record_decisions(forward, first.decisions)
    ten_days_on = only(decide(forward, FORWARD_CHAMPION, forward_rows(0.10), AS_OF + timedelta(days=10)))
    assert ten_days_on["decision"] == "keep"
    assert ten_days_on["reasons"].startswith(
        "cooldown: sent for retraining as of 2024-09-02 00:00, not again before 2024-10-02 00:00"
    )
    assert "would retrain for: live MAPE" in ten_days_on["reasons"]
    # The cooldown's clock is the decision's as-of time: 30 days on, the model may be sent again.
    assert (
        only(decide(forward, FORWARD_CHAMPION, forward_rows(0.10), AS_OF + timedelta(days=30)))["decision"] == "retrain"
    )
    # A decision made as of a later time than the one being evaluated does not count.
    assert (
        only(decide(forward, FORWARD_CHAMPION, forward_rows(0.10), AS_OF - timedelta(days=1)))["decision"] == "retrain"
    )
    without = forward.model_copy(update={"drift_cooldown_days": 0})
    assert (
        only(decide(without, FORWARD_CHAMPION, forward_rows(0.10), AS_OF + timedelta(days=10)))["decision"] == "retrain"
    )


def test_a_replay_forgets_the_decisions_it_is_about_to_make_again(forward):
    for days in (0, 10, 20):
        record_decisions(
            forward, decide(forward, FORWARD_CHAMPION, forward_rows(0.10), AS_OF + timedelta(days=days)).decisions
        )
    assert forget_decisions_from(forward, AS_OF + timedelta(days=5)) == 2
    assert read_decisions(forward)["as_of"].to_list() == [AS_OF]
    assert forget_decisions_from(forward, AS_OF + timedelta(days=5)) == 0


@pytest.fixture
def classifier(tmp_path) -> Settings:
    return Settings(home=tmp_path, symbols=["BTCUSDT"], targets=["direction"], min_live_outcomes=24)


# The backtest promised: 60 % of long calls right, half of the up moves called. Live log loss equals it (prob 0.5).
DIRECTION_CHAMPION = {
    ("BTCUSDT", "direction"): {"version": "3", "precision": 0.60, "recall": 0.50, "log_loss": float(np.log(2))}
}


def calls(hits: int, false_calls: int, missed: int, quiet: int, **kwargs) -> pl.DataFrame:
    """Outcomes with `hits` right long calls, `false_calls` wrong ones, `missed` up moves not called and `quiet`
    down moves not called."""
    signal = ["long"] * (hits + false_calls) + ["flat"] * (missed + quiet)
    label = [1.0] * hits + [0.0] * false_calls + [1.0] * missed + [0.0] * quiet
    return realized("direction", signal, label, **kwargs)


def test_live_precision_and_recall_as_promised_keep_the_model(classifier):
    result = decide(classifier, DIRECTION_CHAMPION, calls(hits=12, false_calls=8, missed=12, quiet=18))
    judged = result.precision_recall[0]
    assert (judged["live_precision"], judged["live_recall"], judged["n"]) == (0.6, 0.5, 50) and judged["status"] == "ok"
    assert only(result)["decision"] == "keep"


def test_precision_drifting_more_than_five_points_in_the_last_week_retrains(classifier):
    # 27 of 60 long calls right: precision 0.45 against the backtest's 0.60 (binomial p 0.024); recall 27/54 = 0.5.
    result = decide(classifier, DIRECTION_CHAMPION, calls(hits=27, false_calls=33, missed=27, quiet=63))
    judged = result.precision_recall[0]
    assert judged["largest_gap"] == pytest.approx(0.15) and judged["precision_p_value"] == pytest.approx(
        0.0242, abs=1e-4
    )
    decision = only(result)
    assert decision["decision"] == "retrain"
    assert "precision 0.450 vs the backtest's 0.600 (p 0.024)" in decision["reasons"]
    assert decision["reasons"].endswith("retraining re-selects the threshold walk-forward")


def test_a_gap_the_sample_size_explains_does_not_retrain_unless_the_test_is_switched_off(classifier):
    # The same 0.45 precision, on 20 calls: binomial p 0.18, what a week of noise gives a stable model.
    noisy = calls(hits=9, false_calls=11, missed=9, quiet=21)
    result = decide(classifier, DIRECTION_CHAMPION, noisy)
    assert result.precision_recall[0]["status"] == "ok" and only(result)["decision"] == "keep"
    gap_alone = classifier.model_copy(update={"drift_precision_recall_alpha": 1.0})
    assert only(decide(gap_alone, DIRECTION_CHAMPION, noisy))["decision"] == "retrain"


def test_precision_recall_reads_only_the_champion_and_the_last_week(classifier):
    good = calls(hits=12, false_calls=8, missed=12, quiet=18)
    bad = calls(hits=2, false_calls=18, missed=22, quiet=8)
    older = bad.with_columns(pl.col("bar_time") - timedelta(days=8))
    other_version = bad.with_columns(model_version=pl.lit("2"))
    result = decide(classifier, DIRECTION_CHAMPION, pl.concat([good, older, other_version]))
    assert result.precision_recall[0]["n"] == 50 and only(result)["decision"] == "keep"
    # Recall alone drifting (precision as promised) is enough.
    lazy = decide(classifier, DIRECTION_CHAMPION, calls(hits=6, false_calls=4, missed=18, quiet=22))
    assert lazy.precision_recall[0]["live_recall"] == 0.25 and only(lazy)["decision"] == "retrain"
    # Fewer outcomes than min_live_outcomes: not judged yet.
    few = decide(classifier, DIRECTION_CHAMPION, calls(hits=2, false_calls=8, missed=5, quiet=5))
    assert few.precision_recall[0]["status"] == "insufficient" and only(few)["decision"] == "keep"


def test_an_untradable_champion_is_judged_on_its_rule_calls_not_its_flat_signals(classifier):
    # Served 'flat' throughout (its rule has no significant edge), but its probability crossed the threshold
    # on the 20 rows it would have called long: the rule's precision and recall are as promised.
    promised = calls(hits=12, false_calls=8, missed=12, quiet=18)
    called = pl.Series([0.7] * 20 + [0.5] * 30)
    untradable = promised.with_columns(signal=pl.lit("flat"), prob_up=called, threshold=pl.lit(0.6))
    result = decide(classifier, DIRECTION_CHAMPION, untradable)
    judged = result.precision_recall[0]
    assert (judged["live_precision"], judged["live_recall"]) == (0.6, 0.5) and only(result)["decision"] == "keep"
