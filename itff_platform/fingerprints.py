"""Fingerprints: short SHA-256 digests of what a result was computed from (rows, settings, source code).

An incremental run skips a lake partition or a study when its fingerprint equals the one recorded with the result:
equal fingerprints mean equal inputs, so the recorded result is what a rebuild would give. Every digest errs on the
side of "changed": a false "changed" costs a rebuild, a false "unchanged" would serve a stale result."""

from __future__ import annotations

import hashlib
import json
from functools import cache
from importlib import metadata
from pathlib import Path

import numpy as np
import polars as pl

PACKAGE_ROOT = Path(__file__).resolve().parent


def digest(*parts: object) -> str:
    """One digest of several parts: strings, bytes, numpy arrays, or anything JSON can write (sorted keys)."""
    sha = hashlib.sha256()
    for part in parts:
        if isinstance(part, np.ndarray) and part.dtype.kind in "OUS":  # strings: their text, not object pointers
            chunk = "\x1f".join(map(str, part.tolist())).encode()
        elif isinstance(part, np.ndarray):
            chunk = str(part.dtype).encode() + str(part.shape).encode() + np.ascontiguousarray(part).tobytes()
        elif isinstance(part, bytes):
            chunk = part
        else:
            chunk = part.encode() if isinstance(part, str) else json.dumps(part, sort_keys=True, default=str).encode()
        sha.update(len(chunk).to_bytes(8, "little") + chunk)  # length-prefixed: ("ab", "c") != ("a", "bc")
    return sha.hexdigest()[:32]


def frame_digest(frame: pl.DataFrame) -> str:
    """The rows of a frame as a set with multiplicity: row order does not count, columns, types and values do."""
    frame = frame.select(sorted(frame.columns))
    canonical = frame.sort(frame.columns, nulls_last=True) if frame.height else frame
    # A fixed seed: polars' row hash is then the same in every process of one polars version (lake.incremental
    # puts the version in the lake's fingerprints, so an upgrade rebuilds once rather than trusting a changed hash).
    return digest(str(frame.schema), canonical.hash_rows(seed=0).to_numpy())


@cache
def code_digest(*packages: str, libraries: tuple[str, ...] = ()) -> str:
    """The Python sources under the given itff_platform subpackages (e.g. "lake") or single modules (e.g.
    "rules.py"), and the installed versions of `libraries`: what decides how inputs become a result. Read once per
    process."""
    paths = [PACKAGE_ROOT / package for package in packages]
    files = sorted(p for path in paths for p in ([path] if path.suffix == ".py" else path.rglob("*.py")))
    versions = {name: metadata.version(name) for name in libraries}
    return digest(versions, *(f"{p.relative_to(PACKAGE_ROOT)}\n{p.read_text()}" for p in files))


# Top-level modules every layer's results depend on (month arithmetic, names, tasks, bar lengths, these digests):
# a change in them must count as a change of the code that uses them.
SHARED_MODULES = ("rules.py", "settings.py", "fingerprints.py")
