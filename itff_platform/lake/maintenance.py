"""Keep the lake's Delta tables from growing without bound.

Every partition rewrite leaves the replaced Parquet files on disk (Delta keeps them for time travel), and a
write killed before its commit leaves files no version references. Maintenance, per table:
- `optimize.compact` merges the small files of a partition into one (daily updates add a file per day);
- `vacuum(full=True)` deletes files no current version uses once they are older than the retention, orphans
  of killed writes included, and reports the bytes reclaimed;
- a checkpoint, so readers replay fewer log entries, and log entries past the log retention (30 days) removed.
Files younger than the retention are never touched, so a write in progress or a reader of a recent version is safe.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from deltalake import DeltaTable


@dataclass(frozen=True)
class TableMaintenance:
    table: str
    bytes_before: int
    bytes_after: int
    files_compacted: int  # small files merged away
    files_added_by_compaction: int
    files_vacuumed: int

    @property
    def bytes_reclaimed(self) -> int:
        return self.bytes_before - self.bytes_after

    def as_row(self) -> dict[str, Any]:
        return {**asdict(self), "bytes_reclaimed": self.bytes_reclaimed}


def directory_bytes(path: str | Path) -> int:
    """Bytes on disk under `path` (data files and log), 0 when absent."""
    root = Path(path)
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) if root.is_dir() else 0


def maintain_table(path: str | Path, retention_hours: int, compact: bool = True) -> TableMaintenance | None:
    """Compact, vacuum and checkpoint one Delta table; None when there is no table at `path`."""
    if not DeltaTable.is_deltatable(str(path)):
        return None
    before = directory_bytes(path)
    table = DeltaTable(str(path))
    removed = added = 0
    if compact:
        # Bin-packs per partition; a partition that is already a single file is left as it is.
        metrics = table.optimize.compact()
        removed, added = int(metrics.get("numFilesRemoved", 0)), int(metrics.get("numFilesAdded", 0))
    # The table's own deletedFileRetentionDuration (a week by default) would refuse a shorter retention;
    # the setting is the operator's decision, so it is applied as given.
    vacuumed = table.vacuum(retention_hours=retention_hours, dry_run=False, enforce_retention_duration=False, full=True)
    table.create_checkpoint()
    table.cleanup_metadata()  # log entries older than delta.logRetentionDuration (30 days), now that a checkpoint covers them
    return TableMaintenance(str(path), before, directory_bytes(path), removed, added, len(vacuumed))


def maintain_tables(paths: dict[str, str | Path], retention_hours: int) -> dict[str, TableMaintenance]:
    done = {name: maintain_table(path, retention_hours) for name, path in paths.items()}
    return {name: result for name, result in done.items() if result is not None}
