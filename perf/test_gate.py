"""The regression gate: lifetimes of rounds of the lab load and a verdict per metric (servingbench/gate/judge.py).

    make compare                                   # = pytest perf/test_gate.py --gate: against baselines/<key>/rounds.json
    pytest perf/test_gate.py --gate --ab-config vllm-candidate          # A/B: vllm against another vllm config
    pytest perf/test_gate.py --gate --server-url $A --ab-server-url $B  # A/B of two deployments
    pytest perf/test_gate.py --gate --ab-python /venv-pr/bin/python      # A/B of two Python environments

Each side is N server lifetimes (--gate-lifetimes, a restart before each; ABBA order in an A/B) of R rounds
(--gate-rounds). Each verdict is regressed, improved, unchanged or inconclusive, with the change, its interval and
the minimum detectable regression of this run; the test fails only on "regressed".
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from servingbench.gate.judge import (ALPHA, DEFAULT_LIFETIMES, DEFAULT_ROUNDS, GateReport, Measure, alpha_per_test,
                                     judge, provenance_mismatches, refuse_mismatches, run_abba, run_interleaved,
                                     run_lifetimes, stored_baseline, what_it_takes)
from servingbench.measure.rounds import FILENAME, Round, RoundsFile

CONFIGS = ["vllm", "hf"]


def gated_configs(session: pytest.Session) -> int:
    """How many configs this run gates, for the false-alarm budget: every collected gate test counts (one skipped
    later, e.g. hf in an A/B of deployments, only makes the split conservative)."""
    return max(1, sum(getattr(item, "originalname", None) == "test_no_regression" for item in session.items))


@pytest.mark.parametrize("config_name", CONFIGS)
def test_no_regression(config_name: str, bench, expectations, measure_or_skip, pytestconfig, gate_reports,
                       request) -> None:
    opt = pytestconfig.getoption
    if not opt("--gate"):
        pytest.skip("the regression gate: run with --gate (make compare)")
    rounds = opt("--gate-rounds") or DEFAULT_ROUNDS
    lifetimes = opt("--gate-lifetimes") or DEFAULT_LIFETIMES
    family_alpha = opt("--gate-alpha") or ALPHA
    configs = gated_configs(request.session)
    workload = bench.workload(expectations, "lab", config_name)
    folder = Path(opt("--baseline-dir") or pytestconfig.rootpath / "baselines") / bench.settings.hardware.key
    notes: list[str] = []

    def side(name: str, **kw: Any) -> Measure:
        return lambda lt, i: Round.of(measure_or_skip(name, workload, round=lt * rounds + i, **kw), lt, i)

    def restart() -> None:
        bench.pool.stop()  # the next measure starts a fresh server: a new lifetime

    stored: list[Round] = []
    stored_source = ""
    if (folder / FILENAME).is_file():
        stored, stored_source = RoundsFile.load(folder / FILENAME).of(config_name), str(folder / FILENAME)
    ab = bool(opt("--ab-config") or opt("--ab-server-url") or opt("--ab-python"))
    if ab:
        if opt("--ab-python"):
            candidate = dataclasses.replace(bench.config(config_name), python=opt("--ab-python"))
            b, mode = side(f"{config_name}@B", config=candidate), f"A/B: this environment against {opt('--ab-python')}"
        elif opt("--ab-server-url"):
            if config_name != "vllm":
                pytest.skip("an A/B of two deployments compares vllm (the reference, --server-url) with --ab-server-url")
            b, mode = side("vllm@B", config=bench.config("vllm"), server_url=opt("--ab-server-url")), \
                f"A/B: {opt('--server-url')} against {opt('--ab-server-url')}"
        else:
            if bench.config(opt("--ab-config")).engine != bench.config(config_name).engine:
                pytest.skip(f"an A/B of configs compares {opt('--ab-config')} with the config of its engine")
            b, mode = side(opt("--ab-config")), f"A/B: {config_name} against {opt('--ab-config')}"
        if opt("--ab-server-url") or bench.remote:
            lifetimes = 1
            notes.append("deployments are not restarted by the suite: one lifetime a side, rounds in ABBA order")
            reference, current = run_interleaved(side(config_name), b, rounds)
        else:
            reference, current = run_abba(side(config_name), b, restart, lifetimes, rounds)
        baseline_rounds = reference
    else:
        problem = None
        try:
            calibration, baseline_rounds = stored_baseline(folder, config_name)
            notes += [f"allowed: {m}" for m in refuse_mismatches(
                provenance_mismatches(calibration, config_name, bench.settings.provenance(), workload.to_dict(),
                                      bench.config(config_name).engine),
                opt("--gate-allow-mismatch"), folder / FILENAME)]
        except (FileNotFoundError, ValueError) as e:
            problem = str(e)
        if problem is not None:  # outside the except clause: one line, not the exception it would chain to
            pytest.fail(problem, pytrace=False)
        stored, stored_source = [], ""  # the baseline itself is the stored data
        if bench.remote:
            lifetimes = 1
            notes.append("--server-url: the deployment is not restarted, one lifetime (the baseline's lifetime "
                         "spread covers it)")
        current = run_lifetimes(side(config_name), restart, lifetimes, rounds)
        reference = baseline_rounds
        mode = f"stored baseline {folder / FILENAME}"
    verdicts, noises = judge(reference, current, configs=configs, stored=stored, stored_source=stored_source,
                             alpha=family_alpha)
    notes += what_it_takes(verdicts, noises, device_class=bench.settings.hardware.device_class, ab=ab,
                           current=current, baseline=baseline_rounds, alpha=alpha_per_test(configs, family_alpha))
    report = GateReport(config_name, mode, rounds, verdicts, lifetimes=lifetimes, alpha=alpha_per_test(configs, family_alpha),
                        notes=notes)
    gate_reports.append(report)
    assert not report.regressed, "regressed:\n" + "\n".join(v.describe() for v in report.regressed) \
        + "\n" + report.table()
