"""perf/studies.toml is typed (issue #24): each study's overlaid parameters are checked at load, per profile, so
a misspelt key, an out-of-range tolerance or a broken workload fails naming the file, the study and the fix."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from servingbench.studies.common import StudyConfigError, load_study_params
from servingbench.studies.params_schema import STUDIES

SHIPPED = Path(__file__).resolve().parents[2] / "perf" / "studies.toml"


@pytest.mark.parametrize("gpu", [False, True], ids=["cpu", "gpu"])
def test_every_shipped_study_loads_for_both_profiles(gpu: bool) -> None:
    sections = tomllib.loads(SHIPPED.read_text())
    assert set(sections) == set(STUDIES), "every section of studies.toml is a typed study, and every study is there"
    for study in sections:
        assert load_study_params(SHIPPED, study, gpu).values


def _load(tmp_path: Path, text: str, study: str, gpu: bool = False):
    p = tmp_path / "studies.toml"
    p.write_text(text)
    return load_study_params(p, study, gpu)


PREFIX = """[prefix_cache]
cpu.workload = { num_requests = 4, concurrency = 2, prompt_len = 64, prefix_len = 32, output_len = 4, kind = "shared-prefix", warmup_requests = 0 }
gpu.workload = { num_requests = 4, concurrency = 2, prompt_len = 64, prefix_len = 32, output_len = 4, kind = "shared-prefix", warmup_requests = 0 }
hit_rate_tolerance = 0.03
"""


def test_a_valid_study_loads(tmp_path: Path) -> None:
    assert _load(tmp_path, PREFIX, "prefix_cache")["hit_rate_tolerance"] == 0.03


@pytest.mark.parametrize(("edit", "names"), [
    (("hit_rate_tolerance = 0.03", "hit_rate_tolerence = 0.03"), ["hit_rate_tolerence", "unknown field",
                                                                  "hit_rate_tolerance is required"]),
    (("hit_rate_tolerance = 0.03", "hit_rate_tolerance = 3"), ["hit_rate_tolerance = 3", "less than or equal to 1"]),
    (("cpu.workload = { num_requests = 4, concurrency = 2", "cpu.workload = { num_requests = 4, concurrency = 0"),
     ["concurrency = 0", "greater than or equal to 1"]),
    (("kind = \"shared-prefix\", warmup_requests = 0 }\ngpu", "kind = \"shared-prefix\", top_p = 7 }\ngpu"),
     ["top_p = 7"]),
])
def test_a_broken_study_fails_at_load_naming_file_study_and_key(tmp_path: Path, edit: tuple[str, str],
                                                                names: list[str]) -> None:
    text = PREFIX.replace(*edit, 1)
    assert text != PREFIX
    with pytest.raises(StudyConfigError) as e:
        _load(tmp_path, text, "prefix_cache")
    msg = str(e.value)
    assert "studies.toml" in msg and "[prefix_cache]" in msg and "cpu profile" in msg, msg
    for name in names:
        assert name in msg, msg


def test_only_the_profile_loaded_is_judged_by_its_overlay(tmp_path: Path) -> None:
    text = PREFIX.replace("gpu.workload = { num_requests = 4, concurrency = 2",
                          "gpu.workload = { num_requests = 4, concurrency = -1")
    assert _load(tmp_path, text, "prefix_cache", gpu=False)  # the CPU overlay is sound
    with pytest.raises(StudyConfigError, match="gpu profile.*concurrency = -1"):
        _load(tmp_path, text, "prefix_cache", gpu=True)


def test_an_unknown_study_section_is_named(tmp_path: Path) -> None:
    with pytest.raises(StudyConfigError, match=r"\[prefix_cahce\] is no study"):
        _load(tmp_path, PREFIX.replace("[prefix_cache]", "[prefix_cahce]"), "prefix_cahce")
