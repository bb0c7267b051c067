"""What a server's log says: the line that names why it failed, and the engine's own reason for a refusal.

One module for both, so that every place that reads a log (a failed start-up, a study that skips a setting the
engine refuses) agrees on what counts as a cause and skips the same traceback source lines.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

LOG_TAIL_LINES = 40
_ERROR_MARKERS = ("Error", "error:", "Exception", "refused", "requires", "No common block size", "not supported")
# Lines that match a marker but are not the cause: warnings, and wrappers that point at the real error above
# (vLLM ends a failed start with "Engine core initialization failed. See root cause above.").
_NOT_A_CAUSE = (" WARNING ", "Warning:", "root cause above")
TRACEBACK_SOURCE = re.compile(r"(^|[\])]\s)\s*(raise |File \")")  # a traceback's source line, not its message
_GENERIC_FAILURES = ("Engine core initialization failed", "See root cause above", "Failed core proc",
                     "WorkerProc initialization failed", "died unexpectedly")
_EXCEPTION_LINE = re.compile(r"\b((?:[A-Za-z_][\w.]*)?(?:Error|Exception)): (.+?)\s*$")


@dataclass(frozen=True)
class KnownRefusal:
    """One way vLLM was seen to refuse a setting a study asks for: its exception and message."""

    kind: str  # the exception's name as the log gives it
    message: re.Pattern[str]
    setting: str  # what it refuses, for the reader

    def matches(self, reason: str) -> bool:
        kind, _, text = reason.partition(": ")
        return kind == self.kind and bool(self.message.search(text))


# The refusals seen (tests/unit/refusal_logs/ keeps a log of each). Only these skip a study's setting: a ValueError
# or TypeError in general is as likely a sizing error the user must see ("KV cache is needed, which is larger than
# the available KV cache memory") or a bug, and those fail the study. A new refusal is added here with its log.
KNOWN_REFUSALS = (
    KnownRefusal("ValueError", re.compile(r"^No valid attention backend found for "),
                 "a block size or KV dtype no attention backend of this GPU supports (H100: block size 8)"),
    KnownRefusal("ValueError", re.compile(r"^No common block size for \d+ "),
                 "a block size the CPU attention backend cannot use (CPU_ATTN: multiples of 32)"),
    KnownRefusal("RuntimeError", re.compile(r"^For FP16/BF16 input, output must have the same dtype as inputs"),
                 "fp8 KV cache with an fp16/bf16 model on this GPU's kernels (H100, vLLM 0.26)"),
    KnownRefusal("ValueError", re.compile(r"^The dtype of q \S+ does not match the q_data_type "),
                 "KV dtype fp8_e5m2 (H100, vLLM 0.26)"),
    KnownRefusal("NotImplementedError", re.compile(r"^FP8 KV cache on CPU requires x86 with AVX-512 or AMX"),
                 "fp8 KV cache on a CPU without AVX-512 or AMX"),
)


def known_refusal(reason: str) -> KnownRefusal | None:
    """The known refusal an engine's exception line (``Kind: message``) is, else None."""
    return next((r for r in KNOWN_REFUSALS if r.matches(reason)), None)


def cause_line(log_text: str) -> str | None:
    """The last line of a log that names an error: what the user needs to read first."""
    for line in reversed(log_text.splitlines()):
        if (any(m in line for m in _ERROR_MARKERS) and not any(n in line for n in _NOT_A_CAUSE)
                and not TRACEBACK_SOURCE.search(line)):
            return line.strip()
    return None


def engine_refusal(log_text: str) -> str | None:
    """The specific exception a failed start-up logged (``ValueError: No common block size for 16 ...``).

    vLLM ends a failed start with generic lines ("Engine core initialization failed. See root cause above"); the
    cause is an exception line above them. Traceback frames and generic wrappers are passed over, and a line the
    engine logged at ERROR level wins over earlier ones (a GPU build logs optional imports that failed first).
    """
    candidates: list[tuple[bool, str]] = []
    for line in log_text.splitlines():
        m = _EXCEPTION_LINE.search(line)
        if not m or any(g in m.group(2) for g in _GENERIC_FAILURES):
            continue
        if TRACEBACK_SOURCE.search(line):
            continue
        candidates.append((" ERROR " in line, f"{m.group(1).rsplit('.', 1)[-1]}: {m.group(2)}"))
    for at_error_level in (True, False):
        for flagged, reason in candidates:
            if flagged == at_error_level:
                return reason
    return None


def start_failure_log(message: str) -> str | None:
    """The log path a ``ServerStartError`` message names (``log: PATH``)."""
    m = re.search(r"^log: (.+)$", message, re.MULTILINE)
    return m.group(1).strip() if m else None


def start_refusal(message: str) -> str | None:
    """The engine's own reason for refusing a setting, from a ``ServerStartError`` message's log.

    None unless the cause is one of ``KNOWN_REFUSALS``: a crash, a timeout, a KV cache too small for one request,
    a bug are failures, not skips.
    """
    log = start_failure_log(message)
    text = ""
    if log:
        try:
            text = Path(log).read_text(errors="replace")
        except OSError:
            pass
    reason = engine_refusal(text or message)
    return reason if reason and known_refusal(reason) else None
