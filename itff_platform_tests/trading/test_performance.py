"""The paper_performance figures on a hand-made ledger of three orders, against values worked out by hand."""

import math
from datetime import timedelta

import polars as pl
import pytest

from itff_platform.trading.autopilot import DECISION_SCHEMA
from itff_platform.trading.ledger import SCHEMA
from itff_platform.trading.performance import Costs, build_report
from itff_platform_tests.conftest import utc

T = [utc(2024, 5, 1) + timedelta(hours=i) for i in range(4)]
CLOSES = [100.0, 110.0, 99.0, 99.0]
COSTS = Costs(fees_bps=10, slippage_bps=5, horizon=1, bars_per_year=8760)
CASH = 10_000.0


def bars() -> pl.DataFrame:
    forward = [math.log(CLOSES[i + 1] / CLOSES[i]) for i in range(3)] + [None]
    return pl.DataFrame(
        {"symbol": "X", "timestamp": T, "close": CLOSES, "forward_return": forward},
        schema_overrides={"timestamp": pl.Datetime("us", "UTC")},
    )


def fills() -> pl.DataFrame:
    """Buy 1,000 USD decided at T0 (filled at T1's open 101), sell it all decided at T1 (open 110), buy 1,000 USD
    decided at T2 (open 99); each 5 bps of slippage against the order and 10 bps of fee."""
    rows, cash, units = [], CASH, 0.0
    for seq, (side, decided, reference, confidence) in enumerate(
        [("buy", 0, 101.0, 0.72), ("sell", 1, 110.0, 0.65), ("buy", 2, 99.0, 0.68)], start=1
    ):
        direction = 1 if side == "buy" else -1
        price = reference * (1 + direction * 5e-4)
        quantity = 1000 / price if side == "buy" else -units
        notional = quantity * price
        cash -= notional + abs(notional) * 1e-3
        units += quantity
        rows.append(
            {
                "seq": seq,
                "kind": "fill",
                "symbol": "X",
                "side": side,
                "status": "filled",
                "confidence": confidence,
                "decided_bar": T[decided],
                "price_bar": T[decided + 1],
                "reference_price": reference,
                "price": price,
                "quantity": quantity,
                "notional_usd": notional,
                "fee_usd": abs(notional) * 1e-3,
                "cash_after": cash,
                "position_after": units,
            }
        )
    return pl.DataFrame(rows, schema={k: v for k, v in SCHEMA.items() if k in rows[0]})


def decisions() -> pl.DataFrame:
    outcomes = [("ordered", 10.0), ("ordered", 20.0), ("ordered", 30.0), ("held", 5.0), ("refused", 15.0)]
    rows = [
        {
            "symbol": "X",
            "bar_time": T[0] + timedelta(hours=i),
            "decided_at": T[0] + timedelta(seconds=i),
            "outcome": outcome,
            "latency_ms": latency,
            "http_status": 412 if outcome == "refused" else 200,
            "prob_long": 0.7,
            "decision_threshold": 0.6,
        }
        for i, (outcome, latency) in enumerate(outcomes)
    ]
    rows.append({"symbol": "X", "bar_time": T[0] + timedelta(hours=5), "decided_at": T[3], "outcome": "error"})
    rows.append({"symbol": "Y", "bar_time": T[3], "decided_at": T[3], "outcome": "held", "latency_ms": 40.0})
    # A re-run of T0's decision, older than the first: the newest decision of a bar is the one counted.
    rows.append({"symbol": "X", "bar_time": T[0], "decided_at": T[0] - timedelta(hours=1), "outcome": "error"})
    return pl.DataFrame(rows, schema=DECISION_SCHEMA)


def test_the_report_matches_the_hand_computed_figures():
    report = build_report(decisions(), fills(), bars(), COSTS, CASH)
    costs = 1e-3 + 1.5e-3  # the fee on entry; the fee and the slippage on exit
    p1, p2, p3 = 101 * 1.0005, 110 * 0.9995, 99 * 1.0005
    net = [math.log(110 / p1) - costs, math.log(2 - 99 / p2) - costs, math.log(99 / p3) - costs]
    assert net[0] > 0 and net[1] > 0 and net[2] < 0
    assert report.live["trades"] == 3 and report.live["hit_rate_trades"] == pytest.approx(2 / 3)
    assert report.live["profit_factor"] == pytest.approx((net[0] + net[1]) / -net[2])

    # The account at each close: cash, plus units x close.
    units = 1000 / p1
    cash1 = CASH - 1001
    cash2 = cash1 + units * p2 * (1 - 1e-3)
    equity = [CASH, cash1 + units * 110, cash2, cash2 - 1001 + 1000 / p3 * 99]
    assert report.equity["equity"].to_list() == pytest.approx(equity)
    peak = max(equity[:3])
    assert report.account["max_drawdown"] == pytest.approx(1 - equity[3] / peak)
    assert report.account["strategy_return"] == pytest.approx(equity[3] / CASH - 1)

    # Slippage: 5 bps against each reference; against the decision close, the gap to the next open as well.
    assert report.slippage["mean_bps"] == pytest.approx(5.0)
    shortfall = [(p1 / 100 - 1) * 1e4, (1 - p2 / 110) * 1e4, (p3 / 99 - 1) * 1e4]
    assert report.slippage["shortfall_mean_bps"] == pytest.approx(sum(shortfall) / 3)

    # Calibration: 0.6-0.7 holds the sell (right) and the last buy (flat move: not right); 0.7-0.8 the first buy.
    rows = {r["confidence"]: r for r in report.calibration.iter_rows(named=True)}
    assert rows["0.6-0.7"]["n"] == 2 and rows["0.6-0.7"]["win_rate"] == 0.5
    assert rows["0.6-0.7"]["gap"] == pytest.approx(0.5 - 0.665)
    assert rows["0.7-0.8"]["n"] == 1 and rows["0.7-0.8"]["gap"] == pytest.approx(1 - 0.72)
    assert report.calibration_gap == pytest.approx((2 * 0.165 + 0.28) / 3)
    assert report.acceptance()["calibration within ±5 %"] is False

    # The service: 7 bars decided (the older re-run of T0 does not count), one error; latency over those timed.
    s = report.service
    assert (s["decisions"], s["ordered"], s["held"], s["refused"], s["error"]) == (7, 3, 2, 1, 1)
    assert s["refused_by_status"] == {"412": 1} and s["error_rate"] == pytest.approx(1 / 7)
    assert s["latency_p50_ms"] == pytest.approx(17.5) and s["latency_p95_ms"] == pytest.approx(37.5)
    assert report.acceptance()["error rate < 1 %"] is False and report.acceptance()["no risk-limit breach"] is True
    assert "| hit rate" in report.markdown()


def test_the_backtest_column_trades_only_what_the_consensus_allowed():
    """Like for like: a bar the confidence gate held (or not tradable) is no order, so it is no backtest trade
    either; every allowed bar is one (the autopilot may order each bar, so the backtest does not step by the
    horizon). It traded every signal past the decision threshold before."""
    gated = [
        {"allow": True, "prob_long": 0.7},
        {"allow": False, "prob_long": 0.58},  # long under the rule, held by the confidence gate
        {"allow": True, "prob_long": 0.3},
    ]
    rows = [
        {"symbol": "X", "bar_time": T[i], "decided_at": T[i], "outcome": "held", "decision_threshold": 0.55, **g}
        for i, g in enumerate(gated)
    ]
    costs = Costs(fees_bps=10, slippage_bps=5, horizon=3, bars_per_year=8760)
    report = build_report(pl.DataFrame(rows, schema=DECISION_SCHEMA), fills().clear(), bars(), costs, CASH)
    cost = 2e-3  # the backtest's round trip: the fee on both sides
    net = [math.log(110 / 100) - cost, math.log(2 - 99 / 99) - cost]  # the long at T0, the short at T2
    assert report.backtest["trades"] == 2 and report.backtest["mean_net"] == pytest.approx(sum(net) / 2)
    markdown = report.markdown()
    assert "backtest, same bars (per trade)" in markdown and "| account Sharpe (annualised, cash included)" in markdown
