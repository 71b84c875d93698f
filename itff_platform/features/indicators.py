"""Technical indicators as polars expressions over one symbol's candles, sorted by time.

Definitions follow the originals: Wilder's RSI/ATR/ADX (smoothing seeded with the mean of the first n
values), Lambert's CCI (mean absolute deviation), LazyBear's WaveTrend, Appel's MACD, Bollinger's %B
(population std). EMAs are seeded with the first value, as TradingView's ta.ema does.

Functions that need an intermediate series take its column name: the silver builder materializes
intermediates in stages, because a nested expression tree is re-evaluated at every use (ADX nested
three deep took 40 s on 10M rows; staged it takes well under one).
"""

from __future__ import annotations

import math
import operator
from functools import cache, partial, reduce

import polars as pl

close, high, low, volume = pl.col("close"), pl.col("high"), pl.col("low"), pl.col("volume")


def rolling_after_warmup(values: pl.Expr, window: int, rolling: str, **kwargs: object) -> pl.Expr:
    """A rolling op over a series whose only nulls are leading ones, null until a full window exists.

    Polars takes a slow path for rolling windows over nulls (rolling_quantile: 4.6 s instead of 0.6 s
    on 10M rows), so the nulls are filled for the computation and the warm-up is masked afterwards."""
    computed = getattr(values.fill_null(0.0), rolling)(window_size=window, **kwargs)
    return pl.when(values.shift(window - 1).is_null()).then(None).otherwise(computed)


def wilder(column: str, period: int) -> pl.Expr:
    """Wilder's smoothing: the mean of the first `period` values, then y = y_prev + (x - y_prev) / period.

    The column may start with nulls (a diff, a shift), and has none after its first value; the seed lands on its
    period-th value."""
    values = pl.col(column)
    # The column's nulls are leading ones (a diff, a shift, a smoother's warm-up), so its first value is at its
    # null count: an O(1) count instead of a running count of non-nulls over every row. (In polars 2.1,
    # is_not_null().arg_max() inside with_columns returned a wrong index.)
    first = values.null_count()
    seed_at = first + (period - 1)
    row = pl.int_range(pl.len(), dtype=pl.UInt32)
    # A scalar, not a rolling mean over every row for the one value used (5x cheaper per Wilder series). Summed in
    # order, by a running sum over the slice: polars' mean sums chunk by chunk, and a column's chunks can vary from
    # run to run (ADX's seed, a mean of drop_nulls().head(), changed in its last bit about once in 40 runs).
    seed = values.slice(first, period).cum_sum().last() / period
    seeded = pl.when(row < seed_at).then(None).when(row == seed_at).then(seed).otherwise(values)
    return seeded.ewm_mean(alpha=1.0 / period, adjust=False)


def ema(column: str, span: int) -> pl.Expr:
    return pl.col(column).ewm_mean(span=span, adjust=False)


def log_return(lag: int) -> pl.Expr:
    return (close / close.shift(lag)).log()


def realized_volatility(log_return_column: str, window: int) -> pl.Expr:
    """sqrt of the sum of squared 1-bar log returns over the window (not annualised)."""
    return rolling_after_warmup(pl.col(log_return_column).pow(2), window, "rolling_sum").sqrt()


# --- stage 1: per-bar inputs of the smoothed indicators
def true_range() -> pl.Expr:
    previous = close.shift(1)
    # max_horizontal skips nulls; the first bar has no previous close, so its true range is undefined.
    return (
        pl.when(previous.is_null())
        .then(None)
        .otherwise(pl.max_horizontal(high - low, (high - previous).abs(), (low - previous).abs()))
    )


def gains_and_losses() -> tuple[pl.Expr, pl.Expr]:
    change = close.diff()
    return change.clip(lower_bound=0), (-change).clip(lower_bound=0)


def directional_movement() -> tuple[pl.Expr, pl.Expr]:
    up = high - high.shift(1)
    down = low.shift(1) - low
    # The first bar stays null so these seed on the same bars as the true range.
    plus_dm = pl.when(up.is_null()).then(None).when((up > down) & (up > 0)).then(up).otherwise(0.0)
    minus_dm = pl.when(up.is_null()).then(None).when((down > up) & (down > 0)).then(down).otherwise(0.0)
    return plus_dm, minus_dm


def typical_price() -> pl.Expr:
    return (high + low + close) / 3


# --- stage 2 and later: from materialized columns
def rsi(avg_gain: str, avg_loss: str) -> pl.Expr:
    gain, loss = pl.col(avg_gain), pl.col(avg_loss)
    return (
        pl.when(loss == 0).then(pl.when(gain == 0).then(50.0).otherwise(100.0)).otherwise(100 - 100 / (1 + gain / loss))
    )


def directional_index(smoothed_dm: str, smoothed_tr: str) -> pl.Expr:
    return 100 * pl.col(smoothed_dm) / pl.col(smoothed_tr)


def dx(plus_di: str, minus_di: str) -> pl.Expr:
    plus, minus = pl.col(plus_di), pl.col(minus_di)
    total = plus + minus
    return pl.when(total == 0).then(0.0).otherwise(100 * (plus - minus).abs() / total)


def cci(tp: str, tp_mean: str, period: int) -> pl.Expr:
    """Mean absolute deviation from the *current* window's mean: `period` shifted terms, no row loop."""
    typical, mean = pl.col(tp), pl.col(tp_mean)
    # A chain of additions runs about twice as fast as sum_horizontal over the same terms.
    mean_deviation = reduce(operator.add, [(typical.shift(lag) - mean).abs() for lag in range(period)]) / period
    return (
        pl.when(mean.is_null() | (mean_deviation == 0))
        .then(None)
        .otherwise((typical - mean) / (0.015 * mean_deviation))
    )


def wavetrend_ci(tp: str, esa: str, deviation: str) -> pl.Expr:
    """The channel index; undefined (null, not NaN) while the deviation is zero, so the EMA after it never sees NaN."""
    dev = pl.col(deviation)
    return pl.when(dev == 0).then(None).otherwise((pl.col(tp) - pl.col(esa)) / (0.015 * dev))


# Polars does not share a rolling std between the expressions that use it (common-subexpression elimination
# skips rolling ops): %B nested it three times, the z-score twice. The means and stds are stage-1 columns.
def bollinger_bands(period: int) -> tuple[pl.Expr, pl.Expr]:
    """The inputs of %B: the close's rolling mean and population std."""
    return close.rolling_mean(period), close.rolling_std(period, ddof=0)


def bollinger_percent_b(mean: str, std: str, width: float) -> pl.Expr:
    m, sd = pl.col(mean), pl.col(std)
    return pl.when(sd == 0).then(None).otherwise((close - (m - width * sd)) / (2 * width * sd))


def volume_moments(window: int) -> tuple[pl.Expr, pl.Expr]:
    """The inputs of the z-score: the volume's rolling mean and sample std."""
    return volume.rolling_mean(window), volume.rolling_std(window, ddof=1)


def volume_zscore(mean: str, std: str) -> pl.Expr:
    sd = pl.col(std)
    return pl.when(sd == 0).then(None).otherwise((volume - pl.col(mean)) / sd)


def trailing_day_range(bars_per_day: int) -> pl.Expr:
    return high.rolling_max(bars_per_day) - low.rolling_min(bars_per_day)


def average_daily_range(day_range: str, days: int, bars_per_day: int, in_place: bool = False) -> pl.Expr:
    """Mean of the last `days` trailing-24h ranges (max high - min low), as a fraction of close.

    Trailing windows rather than calendar days, so the value at t never waits for the day to end. The days are
    added left to right, day 0 first, nulls as zero: a chain of additions, not sum_horizontal, whose order of
    addition (and so the last bits of a volatile series' sum) changed with polars' thread count. The online fold
    (features/carried.py) adds in the same order. `in_place` does the same additions without the shifted copies
    (daily_lag_sum), for a whole read collected on the in-memory engine; the streaming engine rounds the plan's
    rolling sums differently around a Python function, so plans that may stream keep the expression."""
    ranges = pl.col(day_range)
    if in_place:
        lag_sum = partial(daily_lag_sum, days=days, bars_per_day=bars_per_day)
        total = ranges.map_batches(lag_sum, return_dtype=pl.Float64)
    else:
        total = reduce(operator.add, [ranges.shift(d * bars_per_day).fill_null(0.0) for d in range(days)])
    # Until the oldest day exists the average is undefined.
    oldest_missing = ranges.shift((days - 1) * bars_per_day).is_null()
    return pl.when(oldest_missing).then(None).otherwise(total / days / close)


def daily_lag_sum(ranges: pl.Series, days: int, bars_per_day: int) -> pl.Series:
    """ranges[t] + ranges[t - b] + ... + ranges[t - (days - 1) b], added left to right with nulls as zero: the
    expression's chain of `days` shifted copies, bit for bit, accumulated in place. Over a 10M-bar bronze read the
    copies and partial sums were 27 fresh columns (with_daily_range: 1.5 s of CPU; 1.0 s in place)."""
    values = ranges.fill_null(0.0).to_numpy()
    total = values.copy()
    for lag in range(bars_per_day, min(days * bars_per_day, len(values)), bars_per_day):
        total[lag:] += values[:-lag]
    return pl.Series(ranges.name, total)


@cache
def cycle_tables(period: int) -> tuple[pl.Series, pl.Series]:
    """sin and cos of 2*pi*k/period for k in [0, period), computed by the same polars expressions a row would be."""
    fraction = pl.int_range(0, period, eager=True) / period
    return (2 * math.pi * fraction).sin(), (2 * math.pi * fraction).cos()


def calendar_encodings() -> list[pl.Expr]:
    # Epoch arithmetic instead of dt.hour()/dt.weekday(): same values in UTC, ten times faster. Each encoding
    # takes only 86,400 (or 7) values, so they are looked up in a table rather than 4 trig calls per row.
    seconds = pl.col("timestamp").dt.epoch("s")
    second_of_day = seconds % 86400
    day_of_week = (seconds // 86400 + 3) % 7  # 1970-01-01 was a Thursday; Monday = 0
    day_sin, day_cos = cycle_tables(86400)
    week_sin, week_cos = cycle_tables(7)
    return [
        pl.lit(day_sin).gather(second_of_day).alias("hour_sin"),
        pl.lit(day_cos).gather(second_of_day).alias("hour_cos"),
        pl.lit(week_sin).gather(day_of_week).alias("weekday_sin"),
        pl.lit(week_cos).gather(day_of_week).alias("weekday_cos"),
    ]
