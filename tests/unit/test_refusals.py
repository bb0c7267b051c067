"""A study skips a setting only for the refusals vLLM was seen to make; every other start-up failure fails it
(#28 item 6).

Any ValueError or TypeError used to count as a refusal: a KV cache too small for one request (a sizing error the
user must fix) and plain bugs were skipped as "refused by the engine". The logs are in refusal_logs/ (its
README says where each came from).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from servingbench.servers.logs import KNOWN_REFUSALS, engine_refusal, known_refusal, start_refusal

LOGS = Path(__file__).parent / "refusal_logs"
REFUSED = sorted(LOGS.glob("refused_*.log"))
FAILED = sorted(LOGS.glob("failure_*.log"))


def start_error(log: Path) -> str:
    """A ServerStartError's message as servers/process.py writes it: it names the log."""
    return f"vllm server for m exited with code 1 during start-up\nlog: {log}\n--- last lines ---"


def test_the_fixtures_are_there() -> None:
    assert len(REFUSED) >= 5 and len(FAILED) >= 4


@pytest.mark.parametrize("log", REFUSED, ids=[p.stem for p in REFUSED])
def test_a_refusal_seen_is_skipped_in_the_engines_words(log: Path) -> None:
    reason = start_refusal(start_error(log))
    assert reason is not None, f"{log.name}: not read as a refusal"
    assert reason == engine_refusal(log.read_text()) and "Engine core initialization failed" not in reason


@pytest.mark.parametrize("log", FAILED, ids=[p.stem for p in FAILED])
def test_any_other_start_up_failure_fails(log: Path) -> None:
    assert engine_refusal(log.read_text()) is not None  # the log names an exception ...
    assert start_refusal(start_error(log)) is None, f"{log.name}: a failure was taken for a refusal"  # ... not one


def test_each_known_refusal_has_a_fixture() -> None:
    """A pattern no log shows is a guess; each must match the cause of some refused_*.log."""
    causes = [engine_refusal(p.read_text()) or "" for p in REFUSED]
    for refusal in KNOWN_REFUSALS:
        assert any(refusal.matches(c) for c in causes), refusal.setting


def test_the_kv_cache_sizing_error_is_not_a_refusal_even_though_it_is_a_value_error() -> None:
    reason = engine_refusal((LOGS / "failure_kv_cache_too_small.log").read_text())
    assert reason is not None and reason.startswith("ValueError: To serve at least one request")
    assert known_refusal(reason) is None


def test_a_refusal_names_the_setting_it_refuses() -> None:
    found = known_refusal(engine_refusal((LOGS / "refused_h100_fp8_e5m2.log").read_text()) or "")
    assert found is not None and "fp8_e5m2" in found.setting
