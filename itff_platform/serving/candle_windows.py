"""Online features of posted candle windows, for one worker: build_features made cheap for windows asked about
again (remembered by content) and for windows sliding one bar per request (folded from a computed anchor,
features/carried.py). The checks a window must pass first, and the answers' errors, are serving.online's."""

from __future__ import annotations

import hashlib
import logging
import math
import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from itff_platform.serving.online import (
    CANDLE_VALUES,
    EPOCH,
    MICROSECOND,
    Answer,
    Candle,
    RequestError,
    candle_frame,
    check_not_future,
    check_window,
    minimum_candles,
)
from itff_platform.settings import INTERVAL_SECONDS, Settings

if TYPE_CHECKING:
    from itff_platform.features.carried import FoldState
    from itff_platform.features.silver import BoundPlan

log = logging.getLogger("itff_platform.serving")
SETTINGS_KEPT = 16  # settings objects whose key is remembered (a service has one; tests make many)
WINDOWS_KEPT = 64  # candle windows whose features each worker remembers (~230 KB each for 800 bars)
ANCHOR_BARS = 24  # a window is folded from the anchor that starts at its first bar on a 24-bar boundary
ANCHORS_KEPT = 64  # anchors each worker remembers (~0.5 MB each for 800 bars): one per symbol and interval sliding
ANCHORS_QUEUED = 8  # anchors waiting for the background thread at most; beyond, the next window makes its own
FOLDS_KEPT = 4  # windows folded from an anchor that a later window may continue


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
