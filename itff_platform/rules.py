"""Rules that several packages share, each written once: the registered model's name, a target's task, the regime
names, month arithmetic and UTC normalisation.

A leaf: it imports the standard library only, so the lake, training, monitoring, the service and the CLI all use
it without import cycles, and the service's start-up does not grow."""

from __future__ import annotations

from datetime import UTC, date, datetime

# What features.regime labels a bar; `unknown` while its inputs warm up. Metrics, schemas and the API enumerate these.
REGIMES = ["trending_up", "trending_down", "range_bound", "volatile", "neutral", "unknown"]


def registered_name(symbol: str, target: str) -> str:
    """The MLflow registered model of a symbol x target: every family's versions, and the `champion` alias."""
    return f"itff-{symbol}-{target}"


def model_key(name: str) -> tuple[str, str]:
    """(symbol, target) of a registered_name. No target holds a '-', so the last one splits them."""
    symbol, target = name.removeprefix("itff-").rsplit("-", 1)
    return symbol, target


def task_of(target: str) -> str:
    """forward_return is forecast as P10/P50/P90 bands (regression); direction and level_up as P(up)."""
    return "regression" if target == "forward_return" else "classification"


def next_month(day: date) -> date:
    """The first day of the month after `day`'s (a datetime counts by its date)."""
    return date(day.year + day.month // 12, day.month % 12 + 1, 1)


def previous_month(day: date) -> date:
    """The first day of the month before `day`'s."""
    return date(day.year - (day.month == 1), (day.month - 2) % 12 + 1, 1)


def as_utc(moment: datetime) -> datetime:
    """`moment` in UTC; a time without a timezone is read as UTC, as the lake stores every time."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


EXAMPLE_TIME = "2024-09-30T23:00:00Z"


def bar_open(value: str, interval_seconds: int, interval: str, now: datetime | None = None) -> datetime:
    """The open time (UTC) of the bar `value` names, as the lake stamps bars: ISO-8601 (no timezone: UTC), on a
    bar boundary, and at most one bar after now (clock skew), since a later bar has not begun. Raises ValueError
    saying what is wrong; the service (a bar_time) and the order desk (an order's barTime) apply this one rule."""
    try:
        at = as_utc(datetime.fromisoformat(value.strip().replace("Z", "+00:00")))
    except (ValueError, OverflowError, AttributeError):
        raise ValueError(f"{value!r:.60} is not an ISO-8601 time such as {EXAMPLE_TIME}") from None
    if at.timestamp() % interval_seconds:
        raise ValueError(
            f"{at.isoformat()} is not on a {interval} bar boundary (a bar's open time, such as {EXAMPLE_TIME})"
        )
    if at.timestamp() > (now or datetime.now(UTC)).timestamp() + interval_seconds:
        raise ValueError(f"{at.isoformat()} is in the future; at most one {interval} bar after now is accepted")
    return at


def no_champion_remedy(symbol: str, target: str, version: str | None = None) -> str:
    """What to do when a model has no champion (the decision's reasons say why). Here, not in training.promotion,
    so the service can say it without importing promotion (mlflow, sklearn, optuna: ~1.4 s, on the event loop)."""
    force = f"itff promote --symbol {symbol} --target {target} --force {version or 'VERSION'}"
    return (
        f"to get one: raise ITFF_TRIALS and retrain (itff train --symbol {symbol} --target {target} --trials 20), "
        f"or serve a version that did not pass anyway: {force}"
    )
