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


def test_every_imported_name_of_the_package_exists() -> None:
    """``from servingbench.x import y`` anywhere in the suite, its perf tests, scripts and tests, at module level or
    inside a function, names a module and a name that exist. make test does not run perf/ (make perf does), so
    a helper removed as unused while perf/test_fidelity.py still imported it broke make perf unseen (2026-12-06)."""
    import ast
    import importlib

    wrong = []
    for pattern in ("servingbench/**/*.py", "perf/**/*.py", "scripts/**/*.py", "tests/**/*.py"):
        for path in sorted(ROOT.glob(pattern)):
            for node in ast.walk(ast.parse(path.read_text())):
                if not (isinstance(node, ast.ImportFrom) and node.module and node.level == 0
                        and node.module.split(".")[0] == "servingbench"):
                    continue
                where = f"{path.relative_to(ROOT)}:{node.lineno}"
                try:
                    module = importlib.import_module(node.module)
                except ModuleNotFoundError as e:
                    if (e.name or "").split(".")[0] == "servingbench":
                        wrong.append(f"{where}: no module {node.module}")
                    continue  # an optional extra (ray) not installed: its names are checked where it is
                for alias in node.names:
                    if alias.name != "*" and not hasattr(module, alias.name):
                        try:
                            importlib.import_module(f"{node.module}.{alias.name}")
                        except ModuleNotFoundError:
                            wrong.append(f"{where}: {node.module} has no {alias.name}")
    assert not wrong, "\n".join(wrong)


def test_perf_collects() -> None:
    """``make perf``'s tests collect: every module imports and every parametrization resolves, without a server."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "perf/"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert " collected" in done.stdout.splitlines()[-1] or "tests collected" in done.stdout, done.stdout[-500:]
