"""The package's floors, drawn (issue #24, house step 2) and held: a module imports only from floors below its
own, or the basement (``errors.py``, ``extras.py``), so there is no circle between folders. Imports under
``if TYPE_CHECKING:`` (types only, never run) may also name their own floor. Data flows one way: measure ->
servers, load -> figures -> the table (expect) and the session (suite) -> gate, studies -> report -> plugin, cli.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "servingbench"
BASEMENT = {"errors", "extras"}
FLOORS: list[set[str]] = [
    {"measure"},  # records, metrics, statistics, the rounds file: the ground
    {"servers", "load"},  # what is started, what is sent
    {"figures"},  # efficiency against peaks, capacity, a workload's own figures
    {"expect", "suite"},  # the table and its bounds; the session that measures
    {"gate", "studies"},  # verdicts over rounds of lifetimes; studies over configs
    {"report"},
    {"plugin", "cli", "__init__"},  # the faces: pytest's, the command line's, the import's
]


def unit(module: str) -> str:
    """servingbench.gate.judge -> gate; servingbench.cli -> cli; servingbench -> __init__."""
    parts = module.split(".")[1:]
    return parts[0] if parts else "__init__"


def floor(name: str) -> int:
    return next(i for i, units in enumerate(FLOORS) if name in units)


def imports(path: Path) -> list[tuple[str, bool, int]]:
    """(module, types only, line) of each servingbench import in ``path``."""
    tree = ast.parse(path.read_text())
    typing_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            typing_only |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    out = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "servingbench":
            names = [node.module if node.module != "servingbench" else f"servingbench.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.split(".")[0] == "servingbench"]
        out += [(n, id(node) in typing_only, node.lineno) for n in names]
    return out


def test_every_folder_has_a_floor() -> None:
    units = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()} - {"data"}
    units |= {p.stem for p in PACKAGE.glob("*.py")}
    placed = set().union(*FLOORS) | BASEMENT
    assert units == placed, f"unplaced: {sorted(units - placed)}; gone: {sorted(placed - units)}"
    assert len(FLOORS) <= 7  # the ground and at most 6 floors above it


def test_imports_go_down_only() -> None:
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        here = unit(".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts))
        for module, types_only, line in imports(path):
            there = unit(module)
            if there == here or there in BASEMENT:
                continue
            if here in BASEMENT:
                wrong.append(f"{path.name}:{line} the basement imports {module}")
                continue
            ok = floor(there) < floor(here) or (types_only and floor(there) == floor(here))
            if not ok:
                wrong.append(f"{rel}.py:{line}: {here} (floor {floor(here)}) imports {module} (floor {floor(there)})")
    assert not wrong, "\n".join(wrong)


def test_the_checker_sees_an_upward_import(tmp_path: Path) -> None:
    """The rule is not vacuous: an upward import, at module level or in a function, is found."""
    f = tmp_path / "m.py"
    f.write_text("from servingbench.report import build\n\ndef g():\n    import servingbench.gate.judge\n"
                 "if TYPE_CHECKING:\n    from servingbench.suite.bench import Bench\n")
    found = sorted((m, t) for m, t, _ in imports(f))
    assert found == [("servingbench.gate.judge", False), ("servingbench.report", False),
                     ("servingbench.suite.bench", True)]
    here = floor("load")
    assert [m for m, t in found if not (floor(unit(m)) < here or (t and floor(unit(m)) == here))] == \
        ["servingbench.gate.judge", "servingbench.report", "servingbench.suite.bench"]
