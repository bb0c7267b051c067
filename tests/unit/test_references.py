"""Every path to a file of this repository that its code, tables and docs name exists.

Modules moved into packages (``servingbench/studies.py`` into ``servingbench/studies/``, tests into
``tests/unit`` and ``tests/integration``) left docstrings and comments naming files that were gone; this scan
fails on such a name, with the file and line that holds it.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = re.compile(r"(?<![\w/.<-])((?:servingbench|perf|tests|scripts|docs)/[\w/.-]*\.(?:py|toml|json|md|sh))\b")
# The suite, its tables, scripts and docs; not tests/, whose tables name files of their temporary projects.
SOURCES = ["README.md", "Makefile", "pyproject.toml", *(f"{d}/**/*{ext}" for d in ("servingbench", "perf", "scripts",
                                                                                  "docs")
                                                        for ext in (".py", ".toml", ".md", ".sh"))]


def test_every_named_repository_file_exists() -> None:
    missing = []
    for pattern in SOURCES:
        for path in sorted(ROOT.glob(pattern)):
            if not path.is_file():
                continue
            for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
                for name in REFERENCE.findall(line):
                    if not (ROOT / name).exists():
                        missing.append(f"{path.relative_to(ROOT)}:{number}: {name}")
    assert not missing, "files named that do not exist (fix the name):\n" + "\n".join(missing)
