"""The autopilot: with scripted answers, what it does on each kind of answer; against a real `bentoml serve` (started
by the replay's own local_service) over a real lake and champion, that it orders only what the consensus allows,
never twice for a bar, and that `itff replay --trade` produces the report end to end."""

from datetime import timedelta

import httpx
import polars as pl
import pytest
from pydantic import SecretStr

from itff_platform.trading.autopilot import Autopilot, DecisionLog, order_key, run_autopilot, silver_bars
from itff_platform.trading.desk import OrderDesk
from itff_platform.trading.paper_replay import local_service, paper_replay
from itff_platform.trading.performance import latest_decisions, paper_performance
from itff_platform_tests.conftest import utc
from itff_platform_tests.faults.conftest import TOKEN, build_lake_and_champion

ENV = {
    "ITFF_SOURCE": "files",
    "ITFF_SYMBOLS": '["PROMOUSDT"]',
    "ITFF_TARGETS": '["direction"]',
    "ITFF_SERVE_WORKERS": "1",
    "ITFF_PER_SYMBOL_USD_CAP": "1000",
}
ALLOWED = {
    "signal": "long",
    "prob_long": 0.8,
    "confidence": 0.8,
    "threshold": 0.6,
    "decision_threshold": 0.55,
    "allow": True,
    "model_version": "ensemble-abc",
    "regime": "neutral",
}


class Scripted:
    """A client answering /consensus and /trade/execute from a script; it records what was sent."""

    def __init__(self, consensus, order=(200, {"order": {"id": "o1", "status": "filled"}, "fill": {}})):
        self.consensus, self.order, self.sent = consensus, order, []

    def post(self, path, body):
        self.sent.append((path, body))
        answer = self.consensus if path == "/consensus" else self.order
        if isinstance(answer, Exception):
            raise answer
        return (*answer, 3.0)


@pytest.fixture
def pilot_for(settings):
    def make(client):
        pilot = Autopilot(settings, client, order_usd=250)
        return pilot, {
            "timestamp": utc(2024, 5, 1),
            "symbol": "X",
            "close": 100.0,
            **dict.fromkeys(pilot.features, 0.1),
        }

    return make


def test_an_allowed_signal_is_ordered_with_a_key_of_the_symbol_target_and_bar(pilot_for):
    client = Scripted((200, ALLOWED))
    pilot, row = pilot_for(client)
    decision = pilot.decide("X", row)
    (_, asked), (path, sent) = client.sent
    assert asked["bar_time"] == "2024-05-01T00:00:00+00:00" and asked["target"] == "direction"
    assert path == "/trade/execute" and sent["side"] == "buy" and sent["qtyUsd"] == 250 and sent["confidence"] == 0.8
    assert sent["idempotencyKey"] == "autopilot-X-direction-20240501T0000" == decision["idempotency_key"]
    assert order_key("X", utc(2024, 5, 1)) == sent["idempotencyKey"]
    assert sent["barTime"] == asked["bar_time"] and decision["outcome"] == "ordered"
    assert decision["latency_ms"] == 6.0
    # A second run over the same bar sends the same key: the desk replays the order instead of filling it again.
    again = Scripted((200, ALLOWED))
    pilot_for(again)[0].decide("X", row)
    assert again.sent[1][1]["idempotencyKey"] == sent["idempotencyKey"]
    # After a retrain (another ensemble) too: the bar was ordered once and must not be ordered twice; a changed
    # decision under the same key is the desk's 409, a refusal recorded with its reason.
    conflict = (409, {"error": "idempotencyKey: 'autopilot-X-direction-20240501T0000' was used for another order"})
    retrained = Scripted((200, {**ALLOWED, "model_version": "ensemble-def", "confidence": 0.7}), conflict)
    decision = pilot_for(retrained)[0].decide("X", row)
    assert retrained.sent[1][1]["idempotencyKey"] == sent["idempotencyKey"]
    assert decision["outcome"] == "refused" and decision["reason"].startswith("409: idempotencyKey:")


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ({**ALLOWED, "allow": False, "confidence": 0.55}, "confidence 0.550 is below the threshold 0.600"),
        ({**ALLOWED, "allow": False, "signal": "flat"}, "signal flat"),
        ({**ALLOWED, "allow": False, "tradable": False}, "not tradable"),
        # The consensus's own reason comes first: a no-skill ensemble is not "signal flat: P(long) 0.500".
        (
            {**ALLOWED, "allow": False, "signal": "flat", "prob_long": 0.5, "reason": "no voter has skill"},
            "no voter has skill",
        ),
    ],
)
def test_without_allow_nothing_is_ordered_and_the_reason_is_recorded(pilot_for, answer, reason):
    client = Scripted((200, answer))
    decision = pilot_for(client)[0].decide("X", pilot_for(client)[1])
    assert [path for path, _ in client.sent] == ["/consensus"]
    assert decision["outcome"] == "held" and reason in decision["reason"]


@pytest.mark.parametrize(
    ("order", "outcome"),
    [
        ((412, {"error": "confidence: below", "threshold": 0.9}), "refused"),
        ((423, {"error": "risk: locked"}), "refused"),
        ((422, {"error": "qtyUsd: at its cap"}), "refused"),
        ((500, {"error": "boom"}), "error"),
        (httpx.ConnectError("refused"), "error"),
    ],
)
def test_the_desks_refusals_are_decisions_and_faults_are_errors(pilot_for, order, outcome):
    pilot, row = pilot_for(Scripted((200, ALLOWED), order))
    decision = pilot.decide("X", row)
    assert decision["outcome"] == outcome, decision["reason"]


def test_a_consensus_that_fails_or_is_unreachable_is_an_error(pilot_for):
    for consensus in [(503, {"error": "no champion"}), httpx.ReadTimeout("slow")]:
        pilot, row = pilot_for(Scripted(consensus))
        assert pilot.decide("X", row)["outcome"] == "error"


def test_a_symbol_promotion_declined_to_serve_is_held_not_an_error(pilot_for):
    """No champion because promotion found no significant edge (make run's direction models on the sample):
    the platform is deliberately not trading, which is a decision, not a fault. It counted as an error before,
    and failed runbook 004's error-rate bar on every bar of a 30-day replay."""
    declined = {
        "error": "symbol/target: X direction has no champion: not significant; ...",
        "reason": "logistic v1 does not significantly beat the better baseline",
        "remedy": "to get one: raise ITFF_TRIALS and retrain",
    }
    pilot, row = pilot_for(Scripted((400, declined)))
    decision = pilot.decide("X", row)
    assert decision["outcome"] == "held" and decision["http_status"] == 400
    assert decision["reason"] == "no champion: logistic v1 does not significantly beat the better baseline"
    pilot, row = pilot_for(Scripted((400, {"error": "features: missing ['rsi']"})))
    assert pilot.decide("X", row)["outcome"] == "error"  # any other 4xx is the autopilot's own fault


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    folder = tmp_path_factory.mktemp("autopilot")
    settings, _ = build_lake_and_champion(folder)
    settings = settings.model_copy(update={"api_tokens": [SecretStr(TOKEN)], "per_symbol_usd_cap": 1000.0})
    with local_service(settings, TOKEN, ENV) as url:
        yield url, settings


def test_against_the_service_orders_follow_allow_and_a_rerun_never_doubles(served):
    from itff_platform.trading.autopilot import ServiceClient

    url, settings = served
    after, through = utc(2024, 6, 1), utc(2024, 6, 2, 12)
    first = run_autopilot(settings, ServiceClient(url, TOKEN), ["PROMOUSDT"], after, through)
    assert first.height == 36 and set(first["outcome"]) <= {"ordered", "held", "refused"}, first["reason"].to_list()
    assert first.filter(pl.col("outcome") == "ordered")["allow"].all()
    assert not first.filter(pl.col("outcome") == "held")["allow"].any()
    ordered = first.filter(pl.col("outcome") == "ordered")
    assert ordered.height > 0 and first.filter(pl.col("outcome") == "held").height > 0, "needs both kinds of bar"
    fills = OrderDesk(settings).ledger.read().fills()
    assert sorted(fills["idempotency_key"].to_list()) == sorted(ordered["idempotency_key"].to_list())
    assert (fills["decided_bar"] + timedelta(hours=1) == fills["price_bar"]).all()  # the next bar's open

    again = run_autopilot(settings, ServiceClient(url, TOKEN), ["PROMOUSDT"], after, through)
    assert again.filter(pl.col("outcome") == "ordered")["replayed"].all()
    assert OrderDesk(settings).ledger.read().fills().height == fills.height
    assert DecisionLog(settings).read().height == 72


def test_the_report_over_the_ledger_scores_the_first_bars_order_from_the_opening_cash(served, tmp_path):
    """paper_performance over the account the test above traded: the period's first bar was never loaded (its
    order counted in slippage but not scored, the equity a bar late), and the curve started from today's
    ITFF_PAPER_CASH instead of the ledger's opening cash."""
    _, settings = served
    decided = latest_decisions(DecisionLog(settings).read())
    ordered = decided.filter(pl.col("outcome") == "ordered")
    start, end = ordered["bar_time"].min(), decided["bar_time"].max()
    opened = OrderDesk(settings).ledger.read().starting_cash
    later = settings.model_copy(update={"paper_cash": opened * 5})  # ITFF_PAPER_CASH changed since the account opened
    report = paper_performance(later, tmp_path, start, end)
    assert report.live["trades"] == report.slippage["fills"] == ordered.filter(pl.col("bar_time") >= start).height
    assert report.equity["timestamp"][0] == start and report.equity["equity"][0] == pytest.approx(opened)


def test_the_trade_replay_produces_the_report(served):
    """`itff replay --trade` as run: its own service and account; its consensus answers go to the replay's
    prediction log, never the live one (its child service was not told the replay's monitoring folder)."""
    from itff_platform.monitoring.prediction_log import read_prediction_log
    from itff_platform.trading.paper_replay import paper_settings

    _, settings = served
    lines = []
    done = paper_replay(settings, days=2, env=ENV, progress=lines.append)
    newest = silver_bars(settings, "PROMOUSDT")["timestamp"].max()
    assert done.end == newest and done.start == newest - timedelta(hours=47)
    # Every silver bar of the period is decided (47: the lake quarantined one bar of the last two days).
    period = silver_bars(settings, "PROMOUSDT", done.start - timedelta(hours=1), done.end)
    assert done.decisions.height == period.height == 47
    assert len([line for line in lines if "bars decided" in line]) == 2
    assert (done.folder / "paper_equity.png").stat().st_size > 0
    text = (done.folder / "paper_performance.md").read_text()
    assert "| profit factor" in text and "Acceptance (runbook 004)" in text
    ordered = done.decisions.filter(pl.col("outcome") == "ordered").height
    assert done.report.service["decisions"] == 47 and done.report.headline()["orders"] == ordered > 0
    assert done.report.slippage["fills"] == ordered  # each one filled in the replay's own fresh account
    replayed = read_prediction_log(paper_settings(settings)).filter(pl.col("endpoint") == "/consensus")
    assert replayed.filter(pl.col("bar_time") >= done.start).height == 47
    live = read_prediction_log(settings)
    assert live.filter(pl.col("bar_time") >= done.start).is_empty(), "replayed answers in the live log"


def test_the_sensor_runs_the_autopilot_on_new_bars_and_the_asset_reports(served, monkeypatch):
    from dagster import build_sensor_context, materialize

    from itff_platform.defs.resources import ItffSettingsResource
    from itff_platform.defs.trading_assets import autopilot_job, autopilot_requests, paper_performance

    url, settings = served
    first = autopilot_requests(build_sensor_context(), settings)
    (request,) = first.run_requests
    newest = silver_bars(settings, "PROMOUSDT")["timestamp"].max()
    assert request.run_config["ops"]["autopilot_op"]["config"] == {
        "symbol": "PROMOUSDT",
        "after": None,  # a symbol seen for the first time starts at its newest bar, not the lake's history
        "through": newest.isoformat(),
    }
    assert request.tags["dagster/partition/symbol"] == "PROMOUSDT"  # the cluster's per-symbol run limit
    # The run has not decided anything yet (it may fail): the next tick asks again (the same run key, so no second
    # run while it is under way) instead of having moved its cursor past bars never decided.
    (again,) = autopilot_requests(build_sensor_context(cursor=first.cursor), settings).run_requests
    assert again.run_key == request.run_key
    decided = DecisionLog(settings).read()["bar_time"].max()  # the earlier tests' bars
    assert again.run_config["ops"]["autopilot_op"]["config"]["after"] == decided.isoformat()

    monkeypatch.setenv("ITFF_API_TOKENS", f'["{TOKEN}"]')
    monkeypatch.setenv("ITFF_SERVICE_URL", url)
    resource = ItffSettingsResource(lake_dir=str(settings.lake.root), reports_dir=str(settings.reports_dir))
    before = DecisionLog(settings).read().height
    assert autopilot_job.execute_in_process(run_config=request.run_config, resources={"itff": resource}).success
    assert DecisionLog(settings).read().height == before + 1
    assert autopilot_requests(build_sensor_context(cursor=first.cursor), settings).skip_message  # now decided

    result = materialize([paper_performance], resources={"itff": resource})
    metadata = result.asset_materializations_for_node("paper_performance")[0].metadata
    assert "Acceptance (runbook 004)" in metadata["report"].value and "plot: equity" in metadata
    assert metadata["decisions"].value >= 1
