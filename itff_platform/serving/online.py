"""Request validation and online features: the same build_features the lake uses, on the posted candles,
after the lake's own cleaning rules (lake/cleaning.py) have judged them."""

from __future__ import annotations

import hashlib
import logging
import math
import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any, cast

import numpy as np
import polars as pl
from pydantic import BaseModel, Strict

from itff_platform.rules import EXAMPLE_TIME, REGIMES, as_utc, bar_open
from itff_platform.settings import INTERVAL_SECONDS, Settings

if TYPE_CHECKING:
    from itff_platform.contracts.champions import LoadedModel
    from itff_platform.features.carried import FoldState
    from itff_platform.features.silver import BoundPlan

log = logging.getLogger("itff_platform.serving")
# A JSON number, never a boolean or a numeric string: lax pydantic would read `true` as 1.0 and "1.5" as 1.5.
Number = Annotated[float, Strict()]
FLOAT32_MAX = float(np.finfo(np.float32).max)  # the models compute in float32: anything larger becomes inf
LAKE_LOOKBACK_BARS = 48  # how far back an alert's bar is looked for in the lake; older, and the caller sends candles
# TradingView's exchange prefixes and what they mean. The models are trained on Binance spot candles; any other
# market (another exchange, a perpetual future) has other prices, so it is refused rather than guessed at.
EXCHANGES = {"BINANCE": "Binance spot"}
PERPETUAL_SUFFIXES = (".P", "PERP")


class RequestError(ValueError):
    """A bad request: the message names the field and the rule; `details` are extra keys of the JSON answer."""

    def __init__(self, message: str, **details: str | None) -> None:
        super().__init__(message)
        self.details = details

    @property
    def field(self) -> str:
        return str(self).split(":", 1)[0]


class Candle(BaseModel):
    """One bar. A time without a timezone is read as UTC; any offset is accepted and converted to UTC when the
    window becomes a frame (candle_frame), all at once: a per-candle validator cost more than the rest of
    validating 800 candles."""

    timestamp: datetime
    open: Number
    high: Number
    low: Number
    close: Number
    volume: Number


def minimum_candles(settings: Settings) -> int:
    """Bars after which every model feature is defined (the 14-day average daily range is the longest)."""
    return (settings.features.daily_range_days + 1) * settings.bars_per_day


def model_interval(model: LoadedModel, settings: Settings) -> str:
    """The bar interval the model was trained on (meta.json), else the service's."""
    interval = model.meta.get("interval") or settings.interval
    return interval if interval in INTERVAL_SECONDS else settings.interval


EPOCH, NAIVE_EPOCH = datetime(1970, 1, 1, tzinfo=UTC), datetime(1970, 1, 1)
MICROSECOND = timedelta(microseconds=1)
FIRST_UTC_US = (datetime.min.replace(tzinfo=UTC) - EPOCH) // MICROSECOND
LAST_UTC_US = (datetime.max.replace(tzinfo=UTC) - EPOCH) // MICROSECOND
CANDLE_VALUES = ("open", "high", "low", "close", "volume")
SETTINGS_KEPT = 16  # settings objects whose key is remembered (a service has one; tests make many)
WINDOWS_KEPT = 64  # candle windows whose features each worker remembers (~230 KB each for 800 bars)
ANCHOR_BARS = 24  # a window is folded from the anchor that starts at its first bar on a 24-bar boundary
ANCHORS_KEPT = 64  # anchors each worker remembers (~0.5 MB each for 800 bars): one per symbol and interval sliding
ANCHORS_QUEUED = 8  # anchors waiting for the background thread at most; beyond, the next window makes its own
FOLDS_KEPT = 4  # windows folded from an anchor that a later window may continue


def candle_frame(candles: list[Candle]) -> pl.DataFrame:
    """The candles as a frame (timestamp in UTC microseconds), built from two numpy arrays: one pass over the
    objects, no per-candle dict."""
    stamps = np.fromiter(
        (
            ((c.timestamp - EPOCH) if c.timestamp.tzinfo else (c.timestamp - NAIVE_EPOCH)) // MICROSECOND
            for c in candles
        ),
        np.int64,
        len(candles),
    )
    outside = (stamps < FIRST_UTC_US) | (stamps > LAST_UTC_US)  # year 1 at +01:00 is in year 0 in UTC
    if outside.any():
        raise RequestError(f"candles[{int(outside.argmax())}].timestamp: not representable in UTC")
    values = np.array([(c.open, c.high, c.low, c.close, c.volume) for c in candles], dtype=np.float64)
    values = values.reshape(len(candles), len(CANDLE_VALUES))
    return pl.DataFrame(
        {
            "timestamp": pl.Series(stamps).cast(pl.Datetime("us", "UTC")),
            **{name: values[:, i] for i, name in enumerate(CANDLE_VALUES)},
        }
    )


def checked_candles(
    candles: list[Candle], settings: Settings, interval: str, now: datetime | None = None
) -> pl.DataFrame:
    """The candles as a frame, once they pass what the lake demands of bronze (the same rules, by calling
    lake.cleaning.clean_raw) plus what a request adds: strictly increasing, spaced at the model's interval,
    and not from the future."""
    frame = candle_frame(candles)
    check_window(frame, interval)
    check_not_future(frame, interval, now)
    return frame


def check_window(frame: pl.DataFrame, interval: str) -> None:
    """What depends only on the candles themselves (so a window's verdict can be remembered): the lake's
    cleaning rules, strictly increasing, spaced at the model's interval."""
    from itff_platform.lake.cleaning import clean_raw

    steps = frame["timestamp"].diff().dt.total_seconds().slice(1)
    if (steps <= 0).any():
        first = cast(int, (steps <= 0).arg_max()) + 1  # some step is <= 0: arg_max has a row
        raise RequestError(
            f"candles[{first}].timestamp: must be strictly increasing "
            f"({frame['timestamp'][first]} follows {frame['timestamp'][first - 1]})"
        )
    seconds = INTERVAL_SECONDS[interval]
    judged = clean_raw(
        frame.with_columns(
            pl.lit(interval).alias("interval"),
            pl.lit("request").alias("symbol"),
            pl.int_range(pl.len()).alias("position"),
        ),
        seconds,
    )
    if judged.quarantine.height:
        worst = judged.quarantine.sort("position").row(0, named=True)
        field, rule = worst["rule"].split(":", 1)
        raise RequestError(
            f"candles[{worst['position']}].{field}:{rule} (the lake's cleaning rule; "
            f"{judged.quarantine.height} of {frame.height} candles break one)"
        )
    median = float(cast(float, steps.median())) if len(steps) else seconds
    if median != seconds:
        raise RequestError(
            f"candles.timestamp: the candles are {_duration(median)} apart; this model is trained on "
            f"{interval} bars ({seconds} s apart)"
        )


def check_not_future(frame: pl.DataFrame, interval: str, now: datetime | None = None) -> None:
    latest = (now or datetime.now(UTC)) + timedelta(seconds=INTERVAL_SECONDS[interval])
    if frame["timestamp"][-1] > latest:
        raise RequestError(
            f"candles[{frame.height - 1}].timestamp: {frame['timestamp'][-1].isoformat()} is in the future; "
            f"a bar opens at most one {interval} bar after now"
        )


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)} {unit}"
    return f"{seconds:g} s"


Answer = tuple[np.ndarray, str, datetime]  # a model's input rows, the last bar's regime, its time


@dataclass
class _Window:
    """A computed window: every non-label silver column, and the answers already read from it per model input
    (feature names, rows), so a window asked about again costs a dict lookup, not a tail/select/to_numpy.
    A folded window (`exact` unset) holds its anchor's rows and the folded ones: a model may read its last
    `foldable_rows` rows (those with history_bars_needed bars before them, rounded as build_features rounds them);
    one reading more gets the window computed whole, which then replaces it."""

    silver: pl.DataFrame
    answers: dict[tuple[tuple[str, ...], int], Answer | RequestError]
    exact: bool = True
    folded: list[dict[str, Any]] = field(default_factory=list)  # rows after `silver`'s (a folded window's newest bars)
    foldable_rows: int = 0


@dataclass
class _Anchor:
    """build_features on an anchor's bars (silver's columns), the state after its last bar, and the latest
    windows folded from it: (their bars after the anchor, as stamps and values; the state after them; their rows)."""

    silver: pl.DataFrame
    state: FoldState
    conditioned_from: int  # carried.well_conditioned_from: rows before it are never read from a folded window
    folds: list[tuple[np.ndarray, np.ndarray, FoldState, list[dict[str, Any]]]]


class OnlineFeatures:
    """build_features on posted candle windows, for one worker: the same code as silver, made cheap three times over.

    - The lazy plan is built once (per feature settings) over a placeholder source that yields the window being
      computed: building build_features' ~300 expressions took 9 ms of Python per request, more than running
      them on 800 rows. The frame a collect reads is set under a lock, so one window is computed at a time.
    - A window's outcome (its feature rows, or the RequestError its content earns) is remembered by its
      content, so a window asked about again (several models, targets or clients on the same bar, /consensus'
      families) costs a hash. Only the not-in-the-future check, which depends on the clock, runs every time.
    - A frame object seen before (the fast route hands the same parsed frame for the same body) is known by its
      identity: no hash at all; and each model's input rows are kept with the window, so a repeat is answered
      without a thread hop (service._candle_features asks `remembered` on the event loop first).

    Online features are exactly build_features on the posted window (a remembered window is returned as it
    was computed): the test suite pins this bit for bit, and pins a call's answer to the next call's."""

    def __init__(self, kept: int = WINDOWS_KEPT) -> None:
        self.kept = kept
        self._windows: OrderedDict[tuple[str, str, bytes], _Window | RequestError] = OrderedDict()
        # id(frame) -> (the frame, kept alive so its id is not reused; its content digest)
        self._identities: OrderedDict[int, tuple[pl.DataFrame, bytes]] = OrderedDict()
        self._anchors: OrderedDict[tuple[str, str, bytes], Future[_Anchor | None]] = OrderedDict()
        self._queued = 0  # anchors submitted to the background thread and not started
        self._plans: dict[str, BoundPlan] = {}
        self._settings_keys: dict[int, tuple[Settings, str]] = {}
        self._lock = threading.Lock()  # the remembered windows
        self._computing = threading.Lock()  # a plan computes one window at a time
        self.computed = 0  # windows (or anchors) computed by build_features, for the tests and the benchmark
        self.folded = 0  # bars folded in

    def _settings_key(self, settings: Settings) -> str:
        """The feature settings as text, dumped once per settings object (the service has one)."""
        known = self._settings_keys.get(id(settings))
        if known is None or known[0] is not settings:
            known = (settings, f"{settings.interval}|{settings.features.model_dump_json()}")
            if len(self._settings_keys) >= SETTINGS_KEPT:
                self._settings_keys.clear()
            self._settings_keys[id(settings)] = known
        return known[1]

    def _plan(self, settings: Settings, key: str) -> BoundPlan:
        plan = self._plans.get(key)
        if plan is None:
            from itff_platform.features.carried import CARRIED_COLUMNS
            from itff_platform.features.labels import LABEL_COLUMNS
            from itff_platform.features.silver import BoundPlan, build_features

            schema = pl.Schema(
                [("timestamp", pl.Datetime("us", "UTC")), *((name, pl.Float64) for name in CANDLE_VALUES)]
            )
            # Labels read the future and no model takes them: dropped, so the plan never computes them. The
            # smoothers' intermediates are kept: an anchor's state is read from them (features.carried).
            plan = BoundPlan(
                lambda source: build_features(source, settings, keep=CARRIED_COLUMNS).drop(LABEL_COLUMNS), schema
            )
            self._plans[key] = plan
        return plan

    def _digest(self, frame: pl.DataFrame) -> bytes:
        """The frame's content digest; for a frame object seen before, remembered by its identity."""
        with self._lock:
            known = self._identities.get(id(frame))
            if known is not None and known[0] is frame:
                self._identities.move_to_end(id(frame))
                return known[1]
        digest = _content_digest(frame)
        with self._lock:
            self._identities[id(frame)] = (frame, digest)
            if len(self._identities) > self.kept:
                self._identities.popitem(last=False)
        return digest

    def _window(
        self, frame: pl.DataFrame, settings: Settings, interval: str, compute: bool, rows: int | None = None
    ) -> _Window | None:
        """The window's remembered outcome; computed (and remembered) when it is new and `compute` is set, else
        None. Raises the window's RequestError (remembered too). Given the `rows` a model reads, a new window
        may be folded from its anchor (_folded) rather than computed."""
        settings_key = self._settings_key(settings)
        key = (interval, settings_key, self._digest(frame))
        with self._lock:
            known = self._windows.get(key)
            if known is not None:
                self._windows.move_to_end(key)
        if known is None:
            if not compute:
                return None
            try:
                # A folded window judges its bars itself (only those not judged before).
                folded = self._folded(frame, settings, settings_key, interval, rows) if rows is not None else None
                if folded is None:
                    check_window(frame, interval)
                known = folded or _Window(self._silver(frame, settings, settings_key), {})
            except RequestError as error:
                # Kept without its traceback: a re-raise appends frames to it, so a window a client keeps re-sending
                # would grow the chain, and hold those frames' candles, for as long as it stays cached.
                known = error.with_traceback(None)
            self._remember(key, known)
        if isinstance(known, RequestError):
            raise known.with_traceback(None)
        if not known.exact and (rows is None or rows > known.foldable_rows):
            # More rows than the fold answers for (or every row, for rows()): the window computed whole replaces
            # it, so the answer does not depend on which model asked first.
            if not compute:
                return None
            known = _Window(self._silver(frame, settings, settings_key), {})
            self._remember(key, known)
        return known

    def _remember(self, key: tuple[str, str, bytes], outcome: _Window | RequestError) -> None:
        with self._lock:
            self._windows[key] = outcome
            self._windows.move_to_end(key)
            if len(self._windows) > self.kept:
                self._windows.popitem(last=False)

    def rows(self, candles: list[Candle] | pl.DataFrame, settings: Settings, interval: str) -> pl.DataFrame:
        """Every non-label silver column for the window (what build_features gives, bit for bit); `candles` may
        already be a frame (as candle_frame makes it)."""
        frame = candles if isinstance(candles, pl.DataFrame) else candle_frame(candles)
        window = self._window(frame, settings, interval, compute=True)
        assert window is not None  # computed when new
        check_not_future(frame, interval)
        return window.silver  # exact: _window computes a folded window whole for every row

    def features(
        self, frame: pl.DataFrame, settings: Settings, interval: str, rows: int, names: list[str], compute: bool = True
    ) -> Answer | None:
        """The last `rows` rows of the features `names` (in that order), the last bar's regime and time; None when
        the window is not remembered and `compute` is not set. The arrays returned are read-only: they are shared
        by every request on the window."""
        window = self._window(frame, settings, interval, compute, rows)
        if window is None:
            return None
        check_not_future(frame, interval)  # the clock moves: asked every time
        question = (tuple(names), rows)
        answer = window.answers.get(question)
        if answer is None:
            try:
                answer = _model_rows(window, rows, names)
            except RequestError as error:
                answer = error.with_traceback(None)
            window.answers[question] = answer  # a dict assignment: atomic under the GIL
        if isinstance(answer, RequestError):
            raise answer.with_traceback(None)
        return answer

    def _compute(self, frame: pl.DataFrame, settings: Settings, settings_key: str) -> pl.DataFrame:
        """build_features on the frame, with the smoothers' intermediate columns."""
        with self._computing:
            silver = self._plan(settings, settings_key).collect(frame)
            self.computed += 1
        return silver

    def _silver(self, frame: pl.DataFrame, settings: Settings, settings_key: str) -> pl.DataFrame:
        from itff_platform.features.carried import CARRIED_COLUMNS

        return self._compute(frame, settings, settings_key).drop(CARRIED_COLUMNS)

    def _folded(
        self, frame: pl.DataFrame, settings: Settings, settings_key: str, interval: str, rows: int
    ) -> _Window | None:
        """The window folded forward from its anchor, or None when it is not foldable (then it is computed).

        The anchor is the window's bars from its first bar on an ANCHOR_BARS boundary (counted in bars since
        1970), its length all but ANCHOR_BARS of the window's: a window sliding one bar at a time keeps the same
        anchor for ANCHOR_BARS requests, so build_features runs once per ANCHOR_BARS windows, and each window
        folds in its bars after the anchor (only the newest one, when it continues a window folded before).
        The anchor and the folding depend only on the window's content, never on which windows came before:
        a window's features are a function of the window (bit for bit, whatever the worker or its history).
        Not foldable: a window whose first requested row has fewer than history_bars_needed bars of the anchor
        before it (short windows, models reading many rows), or where a smoother is undefined."""
        from itff_platform.features.carried import NotFoldable
        from itff_platform.features.silver import history_bars_needed
        from itff_platform.lake.cleaning import plainly_valid

        stamps = frame["timestamp"].dt.epoch("us").to_numpy()
        aligned = np.flatnonzero(bar_numbers_of(stamps[:ANCHOR_BARS], interval) % ANCHOR_BARS == 0)
        history = history_bars_needed(settings)
        if not len(aligned) or frame.height - rows < int(aligned[0]) + history:
            return None
        start = int(aligned[0])
        end = start + frame.height - ANCHOR_BARS  # the same bars for every window that holds them all
        bars = frame.slice(start, end - start)
        key = (interval, settings_key, _content_digest(bars))
        with self._lock:
            pending = self._anchors.get(key)
            if pending is not None:
                self._anchors.move_to_end(key)
        values = frame.select(CANDLE_VALUES).to_numpy()
        new_stamps, new_values = stamps[end:], values[end:]
        # The anchor's bars passed check_window in the window that brought them (an anchor is only made from a
        # judged window), and so did the bars of a window continued; the others must pass the lake's rules too,
        # and the window its spacing rules: check_window judges the window (and words any refusal) unless
        # plainly_valid says every unjudged bar passes.
        try:
            anchor = pending.result() if pending is not None else None
        except Exception:  # its maker failed (logged there): made anew below, after the window is judged
            pending = anchor = None
        if pending is not None and anchor is None:
            return None  # an anchor where a smoother is undefined
        continued, state, folded = 0, anchor.state if anchor else None, []
        for seen_stamps, seen_values, seen_state, seen_rows in list(anchor.folds) if anchor else ():
            m = len(seen_stamps)
            if (
                continued < m <= len(new_stamps)
                and np.array_equal(seen_stamps, new_stamps[:m])
                and np.array_equal(seen_values, new_values[:m])
            ):
                continued, state, folded = m, seen_state, seen_rows
        unjudged = np.r_[0:start, end + continued : frame.height]
        steps = np.diff(stamps)
        if (
            anchor is None
            or not (steps > 0).all()
            or np.median(steps) != INTERVAL_SECONDS[interval] * 1_000_000
            or not plainly_valid(stamps[unjudged], values[unjudged], INTERVAL_SECONDS[interval])
        ):
            check_window(frame, interval)
        if anchor is None:
            anchor = self._anchor(key, bars, settings, settings_key)
            if anchor is None:
                return None
            state = anchor.state
        foldable_rows = frame.height - start - max(history, anchor.conditioned_from)
        if rows > foldable_rows:
            return None  # rows whose rounding could differ from build_features': computed whole
        if start == 0 and bar_numbers_of(stamps[ANCHOR_BARS : ANCHOR_BARS + 1], interval) % ANCHOR_BARS == 0:
            # The next window's anchor is this window's last bars: made now, off this request's path.
            following = frame.slice(ANCHOR_BARS)
            self._anchor((interval, settings_key, _content_digest(following)), following, settings, settings_key, True)
        assert state is not None  # the anchor's, or a continued window's
        try:
            folded = list(folded)
            for stamp, bar in zip(new_stamps[continued:].tolist(), new_values[continued:].tolist(), strict=True):
                step = state.fold(settings, stamp, tuple(bar), frame.height)
                state = step.state
                folded.append(step.row)
            self.folded += len(new_stamps) - continued
        except NotFoldable:
            return None
        with self._lock:
            anchor.folds.append((new_stamps, new_values, state, folded))
            del anchor.folds[:-FOLDS_KEPT]
        return _Window(anchor.silver, {}, exact=False, folded=folded, foldable_rows=foldable_rows)

    def _anchor(
        self,
        key: tuple[str, str, bytes],
        bars: pl.DataFrame,
        settings: Settings,
        settings_key: str,
        background: bool = False,
    ) -> _Anchor | None:
        """The anchor of these (judged) bars, None where it cannot be folded from (or its making failed: logged);
        made once per key, here or, when `background` is set, by the anchor thread (and then not waited for). A
        request that needs an anchor being made waits for it rather than making it twice."""
        with self._lock:
            pending = self._anchors.get(key)
            mine = pending is None
            if pending is None:
                if background and self._queued >= ANCHORS_QUEUED:
                    return None  # the thread is behind: the window that needs this anchor makes it
                pending = self._anchors[key] = Future()
                if len(self._anchors) > ANCHORS_KEPT:
                    self._anchors.popitem(last=False)  # a background job for it is dropped (_make_anchor)
            else:
                self._anchors.move_to_end(key)
            if mine and background:
                self._queued += 1
        if mine and background:
            try:
                _background_thread().submit(self._make_anchor, key, pending, bars, settings, settings_key, True)
            except BaseException as error:  # e.g. at interpreter shutdown: nobody will make it, so nobody waits
                self._failed(key, pending, error)
            return None
        if mine:
            self._make_anchor(key, pending, bars, settings, settings_key)
        if background:
            return None
        try:
            return pending.result()
        except Exception:  # logged by its maker; this window is computed whole
            return None

    def _make_anchor(
        self,
        key: tuple[str, str, bytes],
        pending: Future[_Anchor | None],
        bars: pl.DataFrame,
        settings: Settings,
        settings_key: str,
        queued: bool = False,
    ) -> None:
        from itff_platform.features.carried import CARRIED_COLUMNS, FoldState, NotFoldable, well_conditioned_from

        if queued:
            with self._lock:
                self._queued -= 1
                evicted = self._anchors.get(key) is not pending
            if evicted:  # forgotten before its turn: not made (a waiter computes its window whole)
                pending.set_result(None)
                return
        try:
            silver = self._compute(bars, settings, settings_key)
            state = FoldState.after(silver, settings)
            conditioned_from = well_conditioned_from(silver, settings, silver.height + ANCHOR_BARS)
            pending.set_result(_Anchor(silver.drop(CARRIED_COLUMNS), state, conditioned_from, []))
        except NotFoldable:
            pending.set_result(None)
        except BaseException as error:  # whoever waits gets None; the next window makes the anchor anew
            log.exception("making a candle anchor failed")
            self._failed(key, pending, error)

    def _failed(self, key: tuple[str, str, bytes], pending: Future[_Anchor | None], error: BaseException) -> None:
        with self._lock:
            if self._anchors.get(key) is pending:
                del self._anchors[key]
        pending.set_exception(error)


_BACKGROUND: list[ThreadPoolExecutor] = []  # one anchor thread per process, shared by every OnlineFeatures
_BACKGROUND_LOCK = threading.Lock()


def _background_thread() -> ThreadPoolExecutor:
    with _BACKGROUND_LOCK:
        if not _BACKGROUND:
            _BACKGROUND.append(ThreadPoolExecutor(1, thread_name_prefix="candle-anchor"))
        return _BACKGROUND[0]


def bar_numbers_of(stamps_us: np.ndarray, interval: str) -> np.ndarray:
    """Bars since 1970 at the interval: what anchors are aligned on."""
    return stamps_us // (INTERVAL_SECONDS[interval] * 1_000_000)


def _content_digest(frame: pl.DataFrame) -> bytes:
    digest = hashlib.blake2b(frame["timestamp"].to_numpy().tobytes(), digest_size=20)
    for name in CANDLE_VALUES:
        digest.update(frame[name].to_numpy().tobytes())
    return digest.digest()


def _model_rows(window: _Window, rows: int, names: list[str]) -> Answer:
    folded = window.folded[len(window.folded) - rows :] if rows < len(window.folded) else window.folded
    parts = []
    if rows > len(folded):
        tail = window.silver.tail(rows - len(folded))
        parts.append(tail.select(names).to_numpy())
        regime, at = tail["regime"][-1], tail["timestamp"][-1]
    if folded:  # an undefined value (None) becomes NaN, as to_numpy makes a null
        parts.append(np.array([[row[name] for name in names] for row in folded], dtype=np.float64))
        regime, at = folded[-1]["regime"], EPOCH + folded[-1]["timestamp"] * MICROSECOND
    x = np.vstack(parts) if len(parts) > 1 else parts[0]
    if not np.isfinite(x).all():  # every row a sequence model reads, not only the last
        bad = sorted({n for row in x for n, v in zip(names, row, strict=True) if not math.isfinite(v)})
        raise RequestError(f"candles: features {bad} are undefined over the last {rows} bar(s); send a longer window")
    x.flags.writeable = False
    return x, regime, at


ONLINE = OnlineFeatures()


def features_from_candles(
    candles: list[Candle] | pl.DataFrame, settings: Settings, rows: int, names: list[str], interval: str | None = None
) -> Answer:
    """The last `rows` rows of the model's features (`names`, in its order) computed from the candles,
    the regime of the last bar, and its time."""
    answer = _candle_answer(candles, settings, rows, names, interval, compute=True)
    assert answer is not None  # computed when new
    return answer


def remembered_features(
    candles: pl.DataFrame, settings: Settings, rows: int, names: list[str], interval: str | None = None
) -> Answer | None:
    """features_from_candles for a window this worker has computed already, else None: no computation, so the
    event loop may ask it without blocking."""
    return _candle_answer(candles, settings, rows, names, interval, compute=False)


def _candle_answer(
    candles: list[Candle] | pl.DataFrame,
    settings: Settings,
    rows: int,
    names: list[str],
    interval: str | None,
    compute: bool,
) -> Answer | None:
    needed = minimum_candles(settings)
    if len(candles) < needed:
        raise RequestError(
            f"candles: {len(candles)} given; at least {needed} {settings.interval} bars are needed for the features"
        )
    frame = candles if isinstance(candles, pl.DataFrame) else candle_frame(candles)
    return ONLINE.features(frame, settings, interval or settings.interval, rows, names, compute)


def features_from_row(features: dict[str, float] | list[float], expected: list[str]) -> np.ndarray:
    """A feature row as a dict by name, or a list in the model's order."""
    if isinstance(features, list):
        if len(features) != len(expected):
            raise RequestError(
                f"features: {len(features)} values given; this model takes {len(expected)}, in order {expected}"
            )
        values = features
    else:
        missing, unexpected = [f for f in expected if f not in features], sorted(set(features) - set(expected))
        if missing or unexpected:
            raise RequestError(f"features: missing {missing}, unexpected {unexpected}; expected {expected}")
        values = [features[f] for f in expected]
    not_numbers = [
        name for name, v in zip(expected, values, strict=True) if isinstance(v, bool) or not isinstance(v, (int, float))
    ]
    if not_numbers:
        raise RequestError(f"features: {not_numbers} must be numbers (not booleans or strings)")
    bad = [name for name, v in zip(expected, values, strict=True) if not math.isfinite(v)]
    if bad:
        raise RequestError(f"features: {bad} must be finite numbers (NaN and infinity are refused)")
    x = np.asarray([values], dtype=np.float64)
    checked_rows(x, "features", expected)
    return x


def checked_rows(x: np.ndarray, field: str, names: list[str]) -> np.ndarray:
    """Every value finite and within float32 range (the models compute in float32: 1e39 would become inf)."""
    finite = np.isfinite(x)
    if not finite.all():
        rows = sorted({int(i) for i in np.argwhere(~finite)[:, 0]})
        raise RequestError(f"{field}: NaN and infinity are refused (rows {rows[:5]})")
    huge = np.abs(x) > FLOAT32_MAX
    if huge.any():
        row, column = (int(v) for v in np.argwhere(huge)[0])
        raise RequestError(
            f"{field}: {names[column]} = {x[row, column]:.3g} in row {row} is beyond the float32 range "
            f"(|value| <= {FLOAT32_MAX:.3g}) the models compute in"
        )
    return x


def checked_model_input(model: LoadedModel, x: np.ndarray, field: str) -> None:
    """Finite in float64 and in float32, but not once scaled (e.g. 1e38 over a tiny training spread): refuse it."""
    if model.forecaster.scaler is not None:
        with np.errstate(all="ignore"):
            scaled = model.forecaster.scale(x)
        if not np.isfinite(scaled).all():
            raise RequestError(f"{field}: a value is too large for the model (beyond float32 range once scaled)")


def checked_output(out: np.ndarray, field: str) -> None:
    """A model output that is not finite (an input far outside anything seen in training) is not an answer."""
    if not np.isfinite(np.asarray(out, dtype=np.float64)).all():
        raise RequestError(
            f"{field}: the model's output is not finite for these values; they are far outside its training data"
        )


def parse_time(value: str, field: str) -> datetime:
    """ISO-8601, in UTC; without a timezone it is read as UTC."""
    try:
        return as_utc(datetime.fromisoformat(value.strip().replace("Z", "+00:00")))
    except (ValueError, OverflowError, AttributeError):
        raise RequestError(f"{field}: {value!r:.60} is not an ISO-8601 time such as {EXAMPLE_TIME}") from None


def parse_bar_time(value: str, settings: Settings, now: datetime | None = None, field: str = "bar_time") -> datetime:
    """The time of the bar a feature row describes, as the lake stamps it (the bar's open, in UTC): rules.bar_open.
    Off a bar boundary no silver row would ever match it, and the prediction would wait for its outcome forever."""
    try:
        return bar_open(value, settings.interval_seconds, settings.interval, now)
    except ValueError as error:
        raise RequestError(f"{field}: {error}") from None


def checked_regime(value: str | None) -> str | None:
    """A client's regime must be one of the six names: it becomes a metric label and a log column."""
    if value is not None and value not in REGIMES:
        raise RequestError(f"regime: {value!r:.60} is not one of {REGIMES}")
    return value


def regime_from_lake(settings: Settings, symbol: str, bar_time: datetime) -> str | None:
    """The regime the lake computed for the symbol's bar at `bar_time`, or None when it does not hold that bar (yet)."""
    from itff_platform.lake.delta import read_rows
    from itff_platform.lake.layers import LakeTables

    end = bar_time + timedelta(seconds=settings.interval_seconds)
    try:
        rows = read_rows(LakeTables.under(settings).silver, settings.interval, symbol, bar_time, end)
    except FileNotFoundError:
        return None
    regime = rows["regime"][0] if rows.height else None
    return regime if regime in REGIMES else None


def newest_lake_regime(settings: Settings, symbol: str) -> tuple[str, datetime] | None:
    """(regime, bar time) of the symbol's newest silver bar: what market_regime_state reports. Only the newest
    month's files are read, found from the Delta log, so a poll costs the same however long the history."""
    from deltalake import DeltaTable

    from itff_platform.lake.delta import read_rows
    from itff_platform.lake.layers import LakeTables

    path = LakeTables.under(settings).silver
    if not DeltaTable.is_deltatable(path):
        return None
    files = pl.DataFrame(DeltaTable(path).get_add_actions(flatten=True))
    months = files.filter((pl.col("partition.symbol") == symbol) & (pl.col("partition.interval") == settings.interval))
    if months.is_empty():
        return None
    newest = cast(date, months["partition.month"].max())  # not empty: a month
    start = datetime(newest.year, newest.month, 1, tzinfo=UTC)
    rows = read_rows(path, settings.interval, symbol, start).filter(pl.col("regime").is_in(REGIMES))
    return (rows["regime"][-1], rows["timestamp"][-1]) if rows.height else None


def tradingview_symbol(ticker: str) -> str:
    """TradingView's {{ticker}}: BINANCE:BTCUSDT or a bare BTCUSDT (taken as Binance spot) -> BTCUSDT.
    Other exchanges and perpetual futures (BYBIT:ETHUSDT.P, BTCUSDTPERP) trade at other prices: refused."""
    exchange, _, symbol = ticker.strip().rpartition(":")
    exchange, symbol = exchange.strip().upper(), symbol.strip().upper()
    if exchange and exchange not in EXCHANGES:
        raise RequestError(
            f"ticker: exchange prefix {exchange!r:.30} is not served; the models are trained on "
            f"{', '.join(f'{k}: ({v})' for k, v in EXCHANGES.items())}"
        )
    if symbol.endswith(PERPETUAL_SUFFIXES):
        raise RequestError(f"ticker: {ticker!r:.40} is a perpetual future; the models are trained on spot candles")
    if not symbol.isalnum():
        raise RequestError(f"ticker: {ticker!r:.40} is not a ticker such as BINANCE:BTCUSDT")
    return symbol


@dataclass(frozen=True)
class LakeBar:
    x: np.ndarray
    regime: str
    bar_time: datetime  # the lake's bar that answers
    close: float
    age_bars: int  # bars between that bar and the one asked about: 0 when the lake holds the bar asked about


def features_from_lake(
    settings: Settings, symbol: str, at: datetime, max_age_bars: int = LAKE_LOOKBACK_BARS
) -> LakeBar:
    """The silver row of the bar at `at` (floored to the bar's open), or else of the newest bar before it, with
    how many bars older that is. A bar the lake quarantined is refused, never answered from the bar before it."""
    from itff_platform.features.silver import feature_columns
    from itff_platform.lake.delta import read_rows
    from itff_platform.lake.layers import LakeTables

    bar = timedelta(seconds=settings.interval_seconds)
    asked = datetime.fromtimestamp(at.timestamp() // settings.interval_seconds * settings.interval_seconds, UTC)
    tables = LakeTables.under(settings)
    try:
        start = asked - max_age_bars * bar
    except OverflowError:  # the year 1: no bar, and no window before it
        raise RequestError(f"time: {at.isoformat()} is before any bar the lake can hold") from None
    try:
        rows = read_rows(tables.silver, settings.interval, symbol, start, asked + bar)
    except FileNotFoundError as error:
        raise RequestError(f"candles: none sent and the lake has no silver table ({error})") from None
    if rows.is_empty() or rows["timestamp"][-1] != asked:
        rule = quarantined_rule(settings, symbol, asked)
        if rule is not None:
            raise RequestError(
                f"time: the lake quarantined the {symbol} bar at {asked:%Y-%m-%d %H:%M} ({rule}); "
                "it is not answered from an older bar: send candles"
            )
    if rows.is_empty():
        raise RequestError(
            f"time: the lake has no {symbol} bar within {max_age_bars} bars before {asked:%Y-%m-%d %H:%M}; "
            "send candles instead"
        )
    last = rows.tail(1)
    x = last.select(feature_columns(settings)).to_numpy()
    if not np.isfinite(x).all():
        raise RequestError(
            f"time: the lake's {symbol} bar at {last['timestamp'][0]:%Y-%m-%d %H:%M} has undefined features; send candles"
        )
    age = int((asked - last["timestamp"][0]) / bar)
    return LakeBar(x, last["regime"][0], last["timestamp"][0], float(last["close"][0]), age)


def quarantined_rule(settings: Settings, symbol: str, at: datetime) -> str | None:
    """The rule the lake's quarantine recorded for the symbol's bar at `at`, or None."""
    from itff_platform.lake.delta import read_rows
    from itff_platform.lake.layers import LakeTables

    try:
        rows = read_rows(
            LakeTables.under(settings).quarantine,
            settings.interval,
            symbol,
            at,
            at + timedelta(seconds=settings.interval_seconds),
        )
    except FileNotFoundError:
        return None
    return str(rows["rule"][-1]) if rows.height else None
