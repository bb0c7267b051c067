"""Small sample traces in each format, generated here from a seed (no download), shipped under
``servingbench/data/traces/`` so that a trace workload runs out of the box and the tests replay real files.

They are shaped like the public traces, not copied from them: a Mooncake-style trace of chat sessions whose later
requests extend an earlier request's blocks and share one of a few system prompts (so its hash_ids imply prefix
hits), an Azure-style trace with datetime stamps and independent requests, and a BurstGPT-style trace in whole
seconds with a failed request (0 response tokens). Regenerate (byte for byte; ``tests/unit/test_trace.py`` checks
the shipped files are these): ``python -m servingbench.load.trace_samples servingbench/data/traces``.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

SAMPLES = {"mooncake": "mooncake_sample.jsonl", "azure": "azure_sample.csv", "burstgpt": "burstgpt_sample.csv"}
SEED = 2026
SYSTEM_PROMPTS, SYSTEM_BLOCKS, MAX_BLOCKS = 3, 4, 14


def samples_dir() -> Path:
    """Where the package ships them."""
    return Path(__file__).resolve().parents[1] / "data" / "traces"


def mooncake_rows(n: int = 32, seed: int = SEED) -> list[dict[str, object]]:
    """Chat sessions: a new session is a system prompt's blocks and a few blocks of its own; a follow-up is its
    session's last request's blocks plus a few new ones (the history, as a chat sends it). Gaps average 600 ms."""
    rng = np.random.default_rng(seed)
    next_id = SYSTEM_PROMPTS * SYSTEM_BLOCKS  # ids below it are the system prompts' blocks
    sessions: list[list[int]] = []
    rows, t = [], 1000
    for _ in range(n):
        follow = [s for s in sessions if len(s) <= MAX_BLOCKS - 3]
        if follow and rng.random() < 0.6:
            base = follow[int(rng.integers(len(follow)))]
            sessions.remove(base)
        else:
            p = int(rng.integers(SYSTEM_PROMPTS))
            base = list(range(p * SYSTEM_BLOCKS, (p + 1) * SYSTEM_BLOCKS))
        new = int(rng.integers(1, 4))
        ids = base + list(range(next_id, next_id + new))
        next_id += new
        sessions.append(ids)
        rows.append({"timestamp": t, "input_length": (len(ids) - 1) * 512 + int(rng.integers(1, 513)),
                     "output_length": int(rng.integers(16, 320)), "hash_ids": ids})
        t += int(rng.exponential(600)) + 1
    return rows


def azure_rows(n: int = 24, seed: int = SEED) -> list[tuple[str, int, int]]:
    """Independent requests, datetime stamps in 100 ns steps as the Azure traces write them."""
    rng = np.random.default_rng(seed + 1)
    t, rows = datetime(2023, 11, 16, 18, 15, 46, 680590), []
    for _ in range(n):
        stamp = t.strftime("%Y-%m-%d %H:%M:%S.%f") + str(int(rng.integers(10)))
        rows.append((stamp, int(np.clip(rng.lognormal(6.8, 0.7), 20, 7000)), int(rng.integers(5, 400))))
        t += timedelta(microseconds=int(rng.exponential(400_000)))
    return rows


def burstgpt_rows(n: int = 24, seed: int = SEED) -> list[tuple[int, str, int, int, int, str]]:
    """Whole-second stamps with bursts (several requests in one second), two models, two log types, and one
    failed request (0 response tokens), as BurstGPT logs one."""
    rng = np.random.default_rng(seed + 2)
    t, rows = 5, []
    for i in range(n):
        req = int(np.clip(rng.lognormal(6.0, 0.8), 10, 6000))
        resp = 0 if i == n // 2 else int(rng.integers(4, 500))
        rows.append((t, "ChatGPT" if rng.random() < 0.7 else "GPT-4", req, resp, req + resp,
                     "Conversation log" if rng.random() < 0.6 else "API log"))
        t += int(rng.choice([0, 0, 1, 2, 3, 5]))
    return rows


def write_samples(folder: str | Path) -> dict[str, Path]:
    """The three sample files under ``folder``, by format."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    paths = {fmt: out / name for fmt, name in SAMPLES.items()}
    paths["mooncake"].write_text("".join(json.dumps(r) + "\n" for r in mooncake_rows()), encoding="utf-8")
    paths["azure"].write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n"
                              + "".join(f"{s},{c},{g}\n" for s, c, g in azure_rows()), encoding="utf-8")
    paths["burstgpt"].write_text("Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
                                 + "".join(",".join(map(str, r)) + "\n" for r in burstgpt_rows()), encoding="utf-8")
    return paths


if __name__ == "__main__":
    for fmt, path in write_samples(sys.argv[1] if len(sys.argv) > 1 else samples_dir()).items():
        print(f"{fmt}: {path} ({path.stat().st_size} bytes)")
