"""The metric catalog: every entry complete, and the seven lists that must agree read from it.

The pinned values below are the lists as they were written out by hand before the catalog: a catalog edit that
changes what the gate, the report, the baselines or the studies see fails here first, naming the list.
"""

from __future__ import annotations

import math
import typing

import pytest

from servingbench.measure import catalog
from servingbench.measure.catalog import CATALOG, DERIVATIONS, SAMPLES
from servingbench.measure.measurement import Measurement, MissingFigure, _WITHOUT_SUCCESS
from servingbench.measure.metrics import compute_metrics
from servingbench.measure.records import RequestRecord
from servingbench.measure.telemetry import TelemetrySummary
from servingbench.plugin.samples import METRICS
from servingbench.report.build import COMPARE
from servingbench.studies.common import SERVING_FIELDS
from servingbench.gate.calibrate import ROW_METRICS
from servingbench.gate.judge import MIN_EFFECT
from servingbench.measure.rounds import GATED, request_samples
from servingbench.expect.bounds import DERIVED

PINNED_GATED = [("output_throughput", True, None, None), ("median_ttft_ms", False, "ttft", 0.5),
                ("p99_ttft_ms", False, "ttft", 0.99), ("median_tpot_ms", False, "tpot", 0.5),
                ("p99_tpot_ms", False, "tpot", 0.99), ("median_itl_ms", False, "itl", 0.5),
                ("median_e2el_ms", False, "e2el", 0.5), ("p99_e2el_ms", False, "e2el", 0.99)]
PINNED_MIN_EFFECT = {"output_throughput": 0.02, "median_tpot_ms": 0.02, "p99_tpot_ms": 0.05, "median_itl_ms": 0.02,
                     "median_e2el_ms": 0.02, "p99_e2el_ms": 0.05, "median_ttft_ms": 0.10, "p99_ttft_ms": 0.15}
PINNED_COMPARE = [
    ("output_throughput", "output throughput (tok/s)", "{:.1f}", "high"),
    ("request_throughput", "request throughput (req/s)", "{:.3f}", "high"),
    ("median_ttft_ms", "TTFT p50 (ms)", "{:.1f}", "low"), ("p99_ttft_ms", "TTFT p99 (ms)", "{:.1f}", "low"),
    ("median_tpot_ms", "TPOT p50 (ms)", "{:.2f}", "low"), ("p99_tpot_ms", "TPOT p99 (ms)", "{:.2f}", "low"),
    ("median_itl_ms", "ITL p50 (ms)", "{:.2f}", "low"), ("median_e2el_ms", "E2E latency p50 (ms)", "{:.0f}", "low"),
    ("p90_e2el_ms", "E2E latency p90 (ms)", "{:.0f}", "low"),
    ("p99_e2el_ms", "E2E latency p99 (ms)", "{:.0f}", "low"),
    ("memory_gib", "peak memory (GiB; GPU, else server RSS)", "{:.2f}", None),
    ("memory_utilization", "memory utilization (of GPU, else host RAM)", "{:.1%}", None),
    ("gpu_utilization", "GPU utilization, mean (%)", "{:.0f}", None),
    ("mean_power_w", "power over the run, mean (W)", "{:.0f}", None),
    ("joules_per_output_token", "energy per output token (J)", "{:.3g}", "low"),
    ("batch_efficiency", "batch efficiency: T(C) / (C x T(1))", "{:.3f}", "high"),
    ("goodput", "goodput within the SLO (req/s)", "{:.3f}", "high"),
    ("mbu", "MBU (memory bandwidth utilization)", "{:.1%}", "high"),
    ("mfu", "MFU (decode FLOPs utilization)", "{:.2%}", "high"),
]
PINNED_DERIVED = {"batch_efficiency", "mbu", "single_stream_mbu", "capacity_rps"}
PINNED_WITHOUT_SUCCESS = {"completed", "failed", "failure_rate", "duration", "max_concurrent_requests",
                          "kv_capacity_tokens"}
PINNED_SERVING_FIELDS = {  # a set: the study rows' key order follows the catalog (output before request throughput)
    "completed", "failed", "duration", "request_throughput", "output_throughput", "total_token_throughput",
    "median_ttft_ms", "p90_ttft_ms", "p99_ttft_ms", "median_tpot_ms", "p90_tpot_ms", "p99_tpot_ms",
    "median_itl_ms", "median_e2el_ms", "p90_e2el_ms", "p99_e2el_ms", "max_concurrent_requests"}
PINNED_SAMPLES = ["ttft", "tpot", "itl", "e2el", "s_per_output_token"]
PINNED_ROWS = (("output_throughput", "min"), ("median_ttft_ms", "max"), ("p99_ttft_ms", "max"),
               ("median_tpot_ms", "max"), ("median_e2el_ms", "max"))


def test_the_lists_read_from_the_catalog_are_the_ones_written_by_hand_before_it() -> None:
    assert [(g.name, g.higher_is_better, g.samples, g.quantile) for g in GATED] == PINNED_GATED
    assert MIN_EFFECT == PINNED_MIN_EFFECT
    assert COMPARE == PINNED_COMPARE
    assert DERIVED == PINNED_DERIVED
    assert _WITHOUT_SUCCESS == PINNED_WITHOUT_SUCCESS
    assert set(SERVING_FIELDS) == PINNED_SERVING_FIELDS and len(SERVING_FIELDS) == len(PINNED_SERVING_FIELDS)
    assert list(METRICS) == PINNED_SAMPLES
    assert ROW_METRICS == PINNED_ROWS


def test_the_lists_agree_with_each_other() -> None:
    assert [g.name for g in GATED] == list(MIN_EFFECT), "every gated metric has its minimum effect, and only they"
    assert {g.samples for g in GATED if g.samples} <= set(METRICS), "a gated quantile's samples are stored ones"
    assert set(SERVING_FIELDS) <= set(CATALOG) and DERIVED <= set(CATALOG) and _WITHOUT_SUCCESS <= set(CATALOG)
    assert not DERIVED & set(SERVING_FIELDS), "a study row holds one run's figures, never a derived one"
    for key, _, _, better in COMPARE:  # the report's direction is the catalog's, spelt its way
        assert better == {"higher": "high", "lower": "low", None: None}[CATALOG[key].better]
    for name, side in ROW_METRICS:  # a calibrated floor only under what is better higher
        assert (side == "min") == CATALOG[name].higher_is_better


@pytest.mark.parametrize("name", list(CATALOG))
def test_each_entry_is_complete(name: str) -> None:
    m = CATALOG[name]
    assert m.name == name and m.unit, f"{name}: needs a unit"
    assert m.better in typing.get_args(catalog.Direction) + (None,)
    assert m.derived in DERIVATIONS
    if m.gated:
        assert m.better is not None, f"{name}: the gate needs a direction to call a change a regression"
        assert 0 < (m.min_effect or 0) < 1, f"{name}: a minimum effect is a fraction"
    if m.quantile is not None:
        assert m.samples in SAMPLES and SAMPLES[m.samples].per_request and 0 < m.quantile < 1
    if m.samples is not None:
        assert m.samples in SAMPLES, f"{name}: samples {m.samples!r} are not in the catalog's SAMPLES"
    if m.label is not None:
        assert m.fmt.format(1.5), f"{name}: the report's format must take a number"
    if m.derived != "run" or not m.bound:
        assert not m.study and not m.without_success, f"{name}: not one run's figure"


def _measurement(records: list[RequestRecord]) -> Measurement:
    return Measurement("k", "hf", "hf", {}, {}, compute_metrics(records, 2.0), TelemetrySummary(), records, 0.0,
                       kv_cache={"capacity_tokens": 1000})


def _record(ok: bool = True) -> RequestRecord:
    r = RequestRecord(request_id="r", prompt_len=4, max_tokens=3, start=1.0)
    if ok:
        r.chunk_times = [1.1, 1.15, 1.25]
        r.output_tokens = 3
    else:
        r.error = "HTTP 500"
    return r


def test_every_one_run_figure_is_one_that_measurement_value_knows() -> None:
    """A one-run catalog entry a bound may name is a figure ``Measurement.value`` gives (not a KeyError), and the
    derived ones are exactly what it does not know: a new metric is declared here and computed there."""
    m = _measurement([_record(), _record()])
    for metric in CATALOG.values():
        if metric.derived == "run" and metric.bound:
            try:
                assert math.isfinite(m.value(metric.name)) or metric.name.startswith("memory")
            except MissingFigure:
                assert metric.name in {"memory_gib", "memory_utilization", "gpu_utilization", "energy_j",
                                       "mean_power_w", "joules_per_output_token", "output_tokens_per_joule"}, \
                    metric.name  # telemetry nothing sampled in this record-only measurement
        else:
            with pytest.raises(KeyError):
                m.value(metric.name)


def test_without_success_figures_are_kept_when_every_request_failed_and_the_others_are_missing() -> None:
    m = _measurement([_record(ok=False)])
    for name in catalog.without_success():
        assert math.isfinite(m.value(name)), name
    with pytest.raises(MissingFigure):
        m.value("output_throughput")


def test_the_samples_the_gate_keeps_are_the_ones_the_baselines_store_in_milliseconds() -> None:
    m = _measurement([_record(), _record()])
    kept = request_samples(m)
    assert set(kept) == {"ttft", "tpot", "itl", "e2el"}
    for name, ms in kept.items():
        assert ms == [round(s * 1e3, 3) for s in METRICS[name].samples(m)]
    assert kept["ttft"] == [100.0, 100.0] and kept["itl"] == [50.0, 100.0, 50.0, 100.0]
