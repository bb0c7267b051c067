"""Speculative decoding against the plain config: what the drafts bought on one load (issue #26 item 3).

Both configs serve the same workload; the speculative one's acceptance comes from the server's /metrics deltas
over the measured part (``spec_acceptance_rate``, ``spec_mean_accepted_length``, figures/workload.py). The
client sees the same thing from its side: a speculative stream's chunk carries every token one engine step
accepted, so output tokens per chunk rise towards the server's mean accepted length, while a plain stream's chunks
carry one token each. The two views are independent (one counts SSE chunks and ``usage``, the other reads engine
counters), so their agreement checks both.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Mapping

from servingbench.measure.measurement import MissingFigure, measured_rows

if TYPE_CHECKING:
    from servingbench.measure.measurement import Measurement

SPEC_FIGURES = ("spec_acceptance_rate", "spec_mean_accepted_length", "spec_drafts", "spec_draft_tokens",
                "spec_accepted_tokens")


def speculative_config(params: Mapping[str, Any]) -> str:
    """vLLM's ``--speculative-config`` JSON from the study's parameters."""
    keys = ("method", "num_speculative_tokens", "prompt_lookup_max", "prompt_lookup_min")
    return json.dumps({k: params[k] for k in keys if k in params})


def tokens_per_chunk(m: "Measurement") -> float | None:
    """Output tokens (as the server's usage counted them) per content chunk, over successful requests; None where
    the server sent no usage (the count would be the chunks themselves, 1 by construction)."""
    ok = [r for r in m.records if r.success]
    if not ok or any(r.output_tokens is None for r in ok):
        return None
    return sum(r.output_tokens for r in ok) / sum(len(r.chunk_times) for r in ok)


def spec_row(mode: str, config_name: str, m: "Measurement") -> dict[str, Any]:
    """One mode's figures: the acceptance where the server drafted (None where not), and tokens per chunk."""
    row: dict[str, Any] = {"key": mode, "config_name": config_name, "status": "measured",
                           "tokens_per_chunk": tokens_per_chunk(m)}
    for name in SPEC_FIGURES:
        try:
            row[name] = m.value(name)
        except MissingFigure:
            row[name] = None
    return row


def spec_findings(rows: list[dict[str, Any]], tolerance: float) -> dict[str, Any]:
    """Speed-up of TPOT and throughput, the acceptance, and whether the client's and the server's views agree."""
    by = {r["key"]: r for r in measured_rows(rows)}
    out: dict[str, Any] = {"tokens_per_chunk_tolerance": tolerance}
    plain, spec = by.get("plain"), by.get("speculative")
    if spec:
        out.update(acceptance_rate=spec["spec_acceptance_rate"], mean_accepted_length=spec["spec_mean_accepted_length"],
                   tokens_per_chunk=spec["tokens_per_chunk"])
        mal, tpc = spec["spec_mean_accepted_length"], spec["tokens_per_chunk"]
        out["views_agree"] = (mal is not None and tpc is not None and 1.0 <= tpc <= mal * (1 + tolerance))
    if plain and spec:
        out["median_tpot_ms"] = {"plain": plain["median_tpot_ms"], "speculative": spec["median_tpot_ms"]}
        out["tpot_speedup"] = (plain["median_tpot_ms"] / spec["median_tpot_ms"]
                               if plain["median_tpot_ms"] and spec["median_tpot_ms"] else None)
        out["throughput_gain"] = (spec["output_throughput"] / plain["output_throughput"]
                                  if plain["output_throughput"] else None)
        out["median_ttft_ms"] = {"plain": plain["median_ttft_ms"], "speculative": spec["median_ttft_ms"]}
    return out
