"""docs/configuration.md, generated from the Settings schema: `python -m itff_platform.settings_docs` (make docs).

A test fails when the file differs from what this writes, so the reference cannot drift from the code."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from itertools import groupby
from pathlib import Path
from typing import Any, cast

from pydantic import BaseModel
from pydantic_core import to_jsonable_python

from itff_platform.settings import LEAVES, Leaf, Settings

DOC = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"
REGENERATE = "make docs (or: python -m itff_platform.settings_docs)"

INTRO = """# Configuration

Generated from `itff_platform/settings.py` by `{regenerate}`: edit the settings' descriptions there, not this file.

Every setting has a working default. Set one in the environment by its flat name, `ITFF_<NAME>`
(`ITFF_TRIALS=5`), or by its path, `ITFF_<SECTION>__<FIELD>` (`ITFF_TRAINING__TRIALS=5`); when both are set the path
wins. Names are case-insensitive. Lists take JSON: `ITFF_SYMBOLS='["BTCUSDT","SOLUSDT"]'`. Relative paths hang off
`ITFF_HOME`. In code, read `settings.<section>.<field>` (`settings.training.trials`); `Settings(trials=5)` and
`settings.model_copy(update={{"trials": 5}})` also take the flat names. `itff settings` prints the effective values,
secrets hidden.
"""

BOUNDS = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}


def _type(leaf: Leaf) -> str:
    annotation = leaf.info.annotation
    text = annotation.__name__ if isinstance(annotation, type) else str(annotation)
    text = re.sub(r"\b(typing|pathlib|datetime|pydantic\.types)\.", "", text).replace("NoneType", "None")
    rules = [
        f"{sign} {getattr(m, bound)}"
        for m in leaf.info.metadata
        for bound, sign in BOUNDS.items()
        if getattr(m, bound, None) is not None
    ]
    rules += [f"matches `{m.pattern}`" for m in leaf.info.metadata if getattr(m, "pattern", None)]
    return _cell(f"`{text}`" + (f" ({', '.join(rules)})" if rules else ""))


def _default(leaf: Leaf) -> str:
    info = leaf.info
    if info.default_factory == Path.cwd:
        return "the working directory"
    value: Any = cast(Callable[[], Any], info.default_factory)() if info.default_factory is not None else info.default
    return "unset" if value is None else f"`{json.dumps(to_jsonable_python(value))}`"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|").replace("<", "&lt;")


def _section_doc(path: tuple[str, ...]) -> str:
    model: type[BaseModel] = Settings
    for part in path:
        model = cast(type[BaseModel], model.model_fields[part].annotation)
    return " ".join((model.__doc__ or "").split()) if path else "What the platform covers, read by every section."


def render() -> str:
    parts = [INTRO.format(regenerate=REGENERATE)]
    for path, leaves in groupby(LEAVES.values(), key=lambda leaf: leaf.path[:-1]):
        parts.append(
            f"\n## {'.'.join(path) or 'General (top level)'}\n\n{_section_doc(path)}\n\n"
            "| Environment | Type | Default | Description |\n|---|---|---|---|\n"
        )
        for leaf in leaves:
            names = "<br>".join(f"`{name}`" for name in leaf.env_names)
            parts.append(
                f"| {names} | {_type(leaf)} | {_cell(_default(leaf))} | {_cell(leaf.info.description or '')} |\n"
            )
    return "".join(parts)


def main() -> None:
    DOC.parent.mkdir(exist_ok=True)
    DOC.write_text(render())
    print(f"wrote {DOC} ({len(LEAVES)} settings)", file=sys.stderr)


if __name__ == "__main__":
    main()
