"""Where candles come from. `candle_source(settings)` picks the configured one."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from itff_platform.market.candles import CandleSource
    from itff_platform.settings import Settings


def candle_source(settings: Settings) -> CandleSource:
    """The source `settings.source` names: the packaged sample, a folder of drop files, or Binance."""
    if settings.source == "sample":
        from itff_platform.market.sample import SampleCandleSource

        return SampleCandleSource()
    if settings.source == "files":
        from itff_platform.market.files import FilesCandleSource

        return FilesCandleSource(settings.sources.files.drop_dir)
    from itff_platform.market.binance import BinanceCandleSource

    return BinanceCandleSource(
        settings.sources.binance.base_url,
        settings.sources.binance.archive_url,
        settings.sources.binance.max_retries,
        settings.sources.binance.http_timeout_s,
    )
