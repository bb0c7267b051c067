"""What a server's log says: the line that names why it failed, and the engine's own reason for a refusal.

One module for both, so that every place that reads a log (a failed start-up, a study that skips a setting the
engine refuses) agrees on what counts as a cause and skips the same traceback source lines.
"""

from __future__ import annotations

import re
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
# Exceptions by which vLLM refuses a setting at start-up (validation, unsupported); others are real failures.
REFUSAL_TYPES = ("ValueError", "NotImplementedError", "ValidationError", "TypeError")
# A RuntimeError is a refusal only when it says a combination is unsupported: vLLM 0.26 on an H100 refuses fp8 KV
# with an fp16 model that way ("For FP8 input, output must have dtype BF16"); "CUDA out of memory" is a crash.
_RUNTIME_REFUSAL = re.compile(r"not supported|unsupported|only supports|requires|must have|must be", re.I)


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

    None when the log names no refusal (a crash, a timeout): those are failures, not skips.
    """
    log = start_failure_log(message)
    text = ""
    if log:
        try:
            text = Path(log).read_text(errors="replace")
        except OSError:
            pass
    reason = engine_refusal(text or message)
    if not reason:
        return None
    kind, _, text = reason.partition(":")
    if kind in REFUSAL_TYPES or (kind == "RuntimeError" and _RUNTIME_REFUSAL.search(text)
                                 and "out of memory" not in text):
        return reason
    return None


