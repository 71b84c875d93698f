"""Rebuild the packaged sample from the shared Binance exports (run once; the output is committed).

.venv/bin/python scripts/build_sample.py ../shared/data/binance-spot
"""

import sys
from pathlib import Path

import polars as pl

OUT = Path(__file__).resolve().parents[1] / "itff_platform" / "market" / "sample_data"


def main(source: Path) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for csv in sorted(source.glob("*-1h.csv.gz")):
        frame = pl.read_csv(csv, try_parse_dates=False).select(
            pl.col("timestamp").str.to_datetime("%Y-%m-%d %H:%M:%S", time_zone="UTC", time_unit="us"),
            *(pl.col(c).cast(pl.Float64) for c in ("open", "high", "low", "close", "volume")),
        )
        target = OUT / csv.name.replace(".csv.gz", ".parquet")
        frame.write_parquet(target, compression="zstd", compression_level=19, statistics=False)
        print(f"{target.name}: {frame.height} rows, {target.stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/binance-spot"))
