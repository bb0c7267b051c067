"""One source per table: ``perf/*.toml`` (what a checkout runs, what ``servingbench calibrate`` writes). The package
data an installed suite falls back to (``expect/defaults.py``) are symlinks to them, so they cannot drift; a copy
put in their place would stop following calibration, so it fails here, naming the fix.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TABLES = ("expected_performance.toml", "studies.toml")


@pytest.mark.parametrize("name", TABLES)
def test_the_packaged_table_is_the_perf_one(name: str) -> None:
    source, packaged = ROOT / "perf" / name, ROOT / "servingbench" / "data" / name
    assert packaged.is_symlink() and packaged.resolve() == source.resolve(), (
        f"{packaged} must be a symlink to its source {source}, not a copy: "
        f"`ln -sf ../../perf/{name} servingbench/data/{name}`")
    assert resources.files("servingbench.data").joinpath(name).read_bytes() == source.read_bytes()
