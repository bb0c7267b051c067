"""Where the default tables are: the project's ``perf/`` under the rootdir (or working directory), else the copies
the package ships as data. Never the package's own location in a checkout: an installed wheel has no ``perf/``."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

TABLE = "expected_performance.toml"
STUDIES = "studies.toml"


def default_path(name: str, rootdir: Path | None = None) -> Path:
    """``<rootdir>/perf/<name>`` if it exists, else the packaged ``servingbench/data/<name>``."""
    local = (rootdir or Path.cwd()) / "perf" / name
    if local.is_file():
        return local
    return Path(str(resources.files("servingbench.data").joinpath(name)))


def default_table_path(rootdir: Path | None = None) -> Path:
    return default_path(TABLE, rootdir)


def default_studies_path(rootdir: Path | None = None) -> Path:
    return default_path(STUDIES, rootdir)
