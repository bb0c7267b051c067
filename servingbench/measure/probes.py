"""Peak memory-bandwidth probes for MBU on hardware missing from the datasheet table.

MBU = achieved bytes/s / peak bytes/s. When no datasheet peak is known, the
denominator is measured once per machine at session start and cached, so every
run on that machine divides by the same number:

* CPU host: a STREAM-like triad on the threads the engine computes on (vLLM's CPU
  build uses all cores but one, i.e. 1 thread on a 2-core box), via torch because
  that is the library whose kernels the engine runs.
* GPU: a device-to-device copy on one GPU, timed with CUDA events.

Both probes run in a child process when called through ``measured_bandwidth``
with the default probe: the GPU one must not leave a CUDA context (and its
reserved memory) in the caller, which next starts a server asking for 90% of GPU
memory; the CPU one runs there too for consistency and so the caller's torch
thread pool and the ~768 MiB of arrays are not touched.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from servingbench.extras import message
from servingbench.measure.files import atomic_write_text

SCHEMA = "servingbench.bandwidth/1"
_MODULE = "servingbench.measure.probes"  # what the child runs with `python -m`
_CHILD_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class BandwidthPeak:
    """A measured peak; ``method`` says exactly what was timed and how bytes were counted."""

    gb_s: float  # 10^9 bytes/s
    method: str
    threads: int | None  # CPU threads used (None on GPU)
    device: str  # "cpu" or the GPU name
    measured_at: str  # ISO date-time (UTC)

    def to_dict(self) -> dict:
        return {"schema": SCHEMA, **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict) -> "BandwidthPeak":
        """Strict: a cache file that does not parse exactly is treated as absent."""
        if not isinstance(d, dict) or d.get("schema") != SCHEMA:
            raise ValueError(f"not a {SCHEMA} record")
        gb_s, threads = d["gb_s"], d["threads"]
        if isinstance(gb_s, bool) or not isinstance(gb_s, (int, float)):
            raise ValueError("gb_s must be a number")
        if not math.isfinite(gb_s) or gb_s <= 0:
            raise ValueError(f"gb_s must be finite and positive, got {gb_s}")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)):
            raise ValueError("threads must be an int or null")
        for k in ("method", "device", "measured_at"):
            if not isinstance(d[k], str):
                raise ValueError(f"{k} must be a string")
        return cls(float(gb_s), d["method"], threads, d["device"], d["measured_at"])


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _llc_mib() -> int | None:
    """Largest CPU cache in MiB (Linux sysfs), to state in ``method`` how far the arrays exceed it."""
    sizes = []
    for f in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        m = re.fullmatch(r"(\d+)([KMG]?)", f.read_text().strip())
        if m:
            sizes.append(int(m[1]) * {"": 1, "K": 2**10, "M": 2**20, "G": 2**30}[m[2]])
    return max(sizes) // 2**20 if sizes else None


def cpu_triad_gb_s(threads: int, *, mib: int = 256, repeats: int = 5) -> BandwidthPeak:
    """STREAM triad a = b + s*c on ``threads`` threads; best of ``repeats`` after one warm-up.

    Each array is ``mib`` MiB so the working set (3 x mib) dwarfs the last-level
    cache: the 256 MiB default is ~8x a 32 MiB L3 (768 MiB working set; some VMs
    report a host-wide L3 of 300+ MiB, so ``method`` records the LLC size). Bytes are
    counted as STREAM does, 3 x 4 per float32 element (b, c read; a written), with
    no credit for write-allocate traffic, so figures compare with published STREAM.
    """
    if threads < 1 or mib < 1 or repeats < 1:
        raise ValueError("threads, mib and repeats must be >= 1")
    n = mib * 2**20 // 4
    s = 3.0
    llc = _llc_mib()
    llc_note = f", LLC {llc} MiB" if llc else ""
    try:
        import torch
    except ImportError:
        torch = None  # type: ignore[assignment]
    if torch is not None:
        prev = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            # full() writes every page, so page faults happen before timing.
            a, b, c = (torch.full((n,), v, dtype=torch.float32) for v in (0.0, 1.0, 2.0))

            def kernel() -> None:
                torch.add(b, c, alpha=s, out=a)  # one fused pass

            best = _best_time(kernel, repeats)
            used = torch.get_num_threads()
        finally:
            torch.set_num_threads(prev)
        lib, per_elem, how = "torch float32", 12, "STREAM counting: 12 bytes/element"
    else:
        # Fallback without torch. numpy ufuncs are single-threaded and cannot fuse,
        # so two passes move 5 arrays. (numexpr fuses and threads, but measured
        # 6.4 GB/s vs numpy's 13.5 on a Xeon VM: it is compute-bound, so not used.)
        import numpy as np

        a, b, c = (np.full(n, v, dtype=np.float32) for v in (0.0, 1.0, 2.0))

        def kernel() -> None:
            np.multiply(c, s, out=a)  # reads c, writes a
            np.add(a, b, out=a)  # reads a and b, writes a

        best = _best_time(kernel, repeats)
        used, per_elem = 1, 20
        lib = f"numpy float32 (torch not importable; {threads} threads requested)"
        how = "two ufunc passes counted as 5 x 4 = 20 bytes/element moved"
    gb_s = per_elem * n / best / 1e9
    method = (f"triad a=b+s*c, {lib}, {used} thread{'s' if used != 1 else ''}, 3 x {mib} MiB"
              f"{llc_note}, best of {repeats} ({how})")
    return BandwidthPeak(gb_s, method, used, "cpu", _now())


def _best_time(kernel: Callable[[], None], repeats: int) -> float:
    """Shortest wall time of ``repeats`` calls after one untimed warm-up."""
    kernel()
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        kernel()
        best = min(best, time.perf_counter() - t0)
    return best


def gpu_copy_gb_s(*, gib: float = 2.0, repeats: int = 10, device_index: int = 0) -> BandwidthPeak:
    """Device-to-device copy of ``gib`` GiB of uint8, counted read + write (2 x bytes).

    Creates a CUDA context in this process; call it through ``measured_bandwidth``
    (which uses a child process) when the caller later needs the GPU's memory.
    """
    try:
        import torch
    except ImportError as e:
        raise RuntimeError(f"{message('the GPU bandwidth probe', 'hf')}: {e}") from e
    if not torch.cuda.is_available():
        raise RuntimeError("GPU bandwidth probe: no CUDA device available (torch.cuda.is_available()"
                           f" is False; torch {torch.__version__}, built with CUDA {torch.version.cuda})")
    if not 0 <= device_index < torch.cuda.device_count():
        raise RuntimeError(f"GPU bandwidth probe: no CUDA device {device_index} "
                           f"({torch.cuda.device_count()} visible)")
    if gib <= 0 or repeats < 1:
        raise ValueError("gib must be > 0 and repeats >= 1")
    dev = torch.device("cuda", device_index)
    n = int(gib * 2**30)
    with torch.cuda.device(dev):
        src = torch.ones(n, dtype=torch.uint8, device=dev)
        dst = torch.empty_like(src)
        dst.copy_(src)  # warm-up
        torch.cuda.synchronize(dev)
        best_ms = math.inf
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            dst.copy_(src)
            end.record()
            end.synchronize()
            best_ms = min(best_ms, start.elapsed_time(end))
        name = torch.cuda.get_device_name(dev)
        del src, dst
        torch.cuda.empty_cache()
    gb_s = 2 * n / (best_ms / 1e3) / 1e9
    method = (f"device-to-device copy dst.copy_(src), torch uint8, {gib:g} GiB, CUDA events, "
              f"best of {repeats} (read + write: 2 bytes/byte copied)")
    return BandwidthPeak(gb_s, method, None, name, _now())


def _safe(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", s)


def _child_probe(gpu: bool, threads: int, module: str) -> BandwidthPeak:
    """Run the probe via ``python -m module`` so its CUDA context/threads/memory die with the child."""
    cmd = [sys.executable, "-m", module] + (["--gpu"] if gpu else ["--cpu-threads", str(threads)])
    shown = " ".join(cmd)
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=_CHILD_TIMEOUT_S)
    except subprocess.TimeoutExpired as e:
        raise RuntimeError(f"bandwidth probe timed out after {_CHILD_TIMEOUT_S:g} s: {shown}") from e
    if r.returncode != 0:
        tail = "\n".join(r.stderr.strip().splitlines()[-20:])
        raise RuntimeError(f"bandwidth probe failed (exit {r.returncode}): {shown}\n{tail}")
    lines = [ln for ln in r.stdout.splitlines() if ln.strip()]
    try:
        return BandwidthPeak.from_dict(json.loads(lines[-1]))
    except (IndexError, ValueError, KeyError, TypeError) as e:
        raise RuntimeError(f"bandwidth probe printed no valid record ({e}): {shown}\n"
                           f"stdout tail: {r.stdout[-2000:]}") from e


def measured_bandwidth(machine_key: str, *, gpu: bool, threads: int, cache_dir: Path,
                       probe: Callable[[], BandwidthPeak] | None = None,
                       module: str = _MODULE, cache_only: bool = False) -> BandwidthPeak | None:
    """Cached peak for this machine and thread count; probes (in a child by default) on a miss, unless
    ``cache_only`` (then None: a report on another day reads what a session measured, it does not probe).

    A missing, corrupt or foreign-schema cache file is re-probed and overwritten.
    """
    path = Path(cache_dir) / "bandwidth" / f"{_safe(machine_key)}-{'gpu' if gpu else f'cpu{threads}t'}.json"
    try:
        return BandwidthPeak.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        if cache_only:
            return None
    peak = probe() if probe is not None else _child_probe(gpu, threads, module)
    atomic_write_text(path, json.dumps(peak.to_dict(), indent=2) + "\n")  # old file or new one, never half
    return peak


def main(argv: list[str] | None = None) -> int:
    """CLI used by the child: prints one BandwidthPeak JSON line on stdout."""
    p = argparse.ArgumentParser(prog=f"python -m {_MODULE}",
                                description=(__doc__ or "").split("\n")[0])
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--gpu", action="store_true", help="device-to-device copy on one GPU")
    g.add_argument("--cpu-threads", type=int, metavar="N", help="CPU triad on N threads")
    p.add_argument("--mib", type=int, default=256, help="CPU: MiB per array (default 256)")
    p.add_argument("--gib", type=float, default=2.0, help="GPU: GiB copied (default 2)")
    p.add_argument("--device-index", type=int, default=0, help="GPU: which device (default 0)")
    a = p.parse_args(argv)
    try:
        peak = (gpu_copy_gb_s(gib=a.gib, device_index=a.device_index) if a.gpu
                else cpu_triad_gb_s(a.cpu_threads, mib=a.mib))
    except (RuntimeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(peak.to_dict()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
