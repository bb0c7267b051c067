"""Seeded synthetic request lengths: fixed, uniform, normal or lognormal, clipped to [min, max].

One fixed length hides what mixed traffic costs (ragged batches, prefill/decode interleaving), so workloads can
draw lengths per request. Every dist is given by the mean (and stdev) of the *lengths*, so an entry reads the
same whatever the dist; lognormal's mu and sigma are derived from them, never written by hand.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from servingbench.errors import ConfigError
from servingbench.load.synthetic import FIRST_ORDINARY_ID, RequestSpec

KINDS = ("fixed", "uniform", "normal", "lognormal")
_SHAPE_KEYS = {"fixed": ("mean",), "uniform": ("mean", "range_ratio"), "normal": ("mean", "stdev"),
               "lognormal": ("mean", "stdev")}
_EXAMPLE = '{ dist = "lognormal", mean = 128, stdev = 64, min = 16, max = 512 }'
_HINT = {"mean": "mean = 128", "stdev": "stdev = 64", "range_ratio": "range_ratio = 0.5"}


def _config_error(msg: str) -> Exception:
    return ConfigError(msg)


def _g(x: float) -> str:
    return f"{x:g}"


@dataclass(frozen=True)
class LengthDist:
    """A length distribution. Draws are rounded to integers and clipped to [min, max] (min is at least 1), so
    heavy clipping moves the realised mean: keep the bounds wide of the mean if the mean matters."""

    kind: str = "fixed"
    mean: float = 128
    stdev: float = 0.0
    range_ratio: float = 0.0
    min: int = 1
    max: int | None = None

    def __post_init__(self) -> None:
        # Plain ValueErrors here; parse() prefixes them with where the entry came from.
        if self.kind not in KINDS:
            raise ValueError(f"unknown dist {self.kind!r}; use one of {', '.join(KINDS)}")
        if not self.mean > 0:
            raise ValueError(f"mean = {self.mean!r} must be > 0; give the average length in tokens, e.g. mean = 128")
        if self.stdev < 0:
            raise ValueError(f"stdev = {_g(self.stdev)} is negative; use stdev >= 0 (0: every length is the mean)")
        if not 0 <= self.range_ratio < 1:
            raise ValueError(f"range_ratio = {_g(self.range_ratio)} is outside [0, 1); use e.g. 0.5 for lengths "
                             f"in [mean*0.5, mean*1.5]")
        if self.min < 1:
            raise ValueError(f"min = {self.min} is below 1; lengths are at least 1 token, use min >= 1")
        if self.max is not None and self.min > self.max:
            raise ValueError(f"min = {self.min} > max = {self.max}; swap them or widen the range")

    @classmethod
    def parse(cls, entry: Mapping[str, Any] | int, where: str) -> LengthDist:
        """An int (a fixed length) or a table such as ``{ dist = "uniform", mean = 128, range_ratio = 0.5 }``;
        raises ConfigError naming ``where``, the bad key and the fix."""
        if isinstance(entry, int) and not isinstance(entry, bool):
            if entry < 1:
                raise _config_error(f"{where}: length {entry} must be >= 1; use a positive number of tokens")
            return cls(kind="fixed", mean=entry, min=1)
        if not isinstance(entry, Mapping):
            raise _config_error(f"{where}: expected a length (an integer) or a table like {_EXAMPLE}, "
                                f"got {entry!r}")
        kind = entry.get("dist", "fixed")
        if kind not in KINDS:
            raise _config_error(f"{where}: unknown dist {kind!r}; use one of {', '.join(KINDS)}")
        allowed = ("dist", *_SHAPE_KEYS[kind], "min", "max")
        unknown = sorted(set(entry) - set(allowed))
        if unknown:
            raise _config_error(f"{where}: unknown key(s) {', '.join(unknown)} for dist {kind!r}; it takes "
                                f"{', '.join(allowed)} (stdev is for normal/lognormal, range_ratio for uniform)")
        for key in _SHAPE_KEYS[kind]:
            if key not in entry:
                raise _config_error(f"{where}: dist {kind!r} needs {key!r}; add it, e.g. {_HINT[key]}")
        values: dict[str, Any] = {}
        for key in (k for k in allowed[1:] if k in entry):
            v = entry[key]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise _config_error(f"{where}: {key} = {v!r} is not a number; write it unquoted, e.g. {key} = 64")
            if key in ("min", "max"):
                if v != int(v):
                    raise _config_error(f"{where}: {key} = {v!r} must be a whole number of tokens, "
                                        f"e.g. {key} = {int(v)}")
                v = int(v)
            values[key] = v
        try:
            return cls(kind=kind, **values)
        except ValueError as e:
            raise _config_error(f"{where}: {e}") from None

    def sample(self, n: int, rng: np.random.Generator) -> list[int]:
        """``n`` lengths (ints >= 1) drawn from ``rng``, so a seeded generator gives the same lengths."""
        m = self.mean
        if self.kind == "fixed":
            raw = np.full(n, float(m))
        elif self.kind == "uniform":
            # The same integer bounds as vLLM bench's --random-range-ratio.
            lo, hi = int(m * (1 - self.range_ratio)), int(m * (1 + self.range_ratio))
            raw = rng.integers(lo, hi + 1, size=n).astype(float)
        elif self.kind == "normal":
            raw = rng.normal(m, self.stdev, size=n)
        else:
            # Lengths with mean m and stdev s: sigma^2 = ln(1 + s^2/m^2), mu = ln(m) - sigma^2/2.
            sigma2 = math.log1p((self.stdev / m) ** 2)
            raw = rng.lognormal(math.log(m) - sigma2 / 2, math.sqrt(sigma2), size=n)
        upper = np.inf if self.max is None else self.max
        return [int(x) for x in np.clip(np.rint(raw), max(1, self.min), upper)]

    def to_dict(self) -> dict[str, Any]:
        """The table form; ``LengthDist.parse(d.to_dict(), ...)`` gives ``d`` back."""
        d: dict[str, Any] = {"dist": self.kind, **{k: getattr(self, k) for k in _SHAPE_KEYS[self.kind]},
                             "min": self.min}
        return d if self.max is None else {**d, "max": self.max}

    def describe(self) -> str:
        """Short label for reports: ``lognormal(128±64, 16..512)``, ``uniform(128±50%)``, ``fixed(128)``."""
        shape = _g(self.mean) + {"fixed": "", "uniform": f"±{_g(round(self.range_ratio * 100, 2))}%"}.get(
            self.kind, f"±{_g(self.stdev)}")
        if self.min != 1 or self.max is not None:
            shape += f", {self.min}..{'' if self.max is None else self.max}"
        return f"{self.kind}({shape})"


def synthetic_prompts(num_requests: int, prompt: LengthDist, output: LengthDist, vocab_size: int,
                      seed: int) -> list[RequestSpec]:
    """Random token-id prompts with per-request lengths; the same seed gives the same requests (draw a fresh
    seed per run, or a prefix cache serves the repeats)."""
    if num_requests < 1:
        raise ValueError(f"num_requests must be >= 1, got {num_requests}")
    if vocab_size <= FIRST_ORDINARY_ID:
        raise ValueError(f"vocab_size must be > {FIRST_ORDINARY_ID} (ids below it are special), got {vocab_size}")
    rng = np.random.default_rng(seed)
    prompt_lens = prompt.sample(num_requests, rng)
    output_lens = output.sample(num_requests, rng)
    ids = rng.integers(FIRST_ORDINARY_ID, vocab_size, size=sum(prompt_lens))
    ends = np.cumsum(prompt_lens)
    return [RequestSpec(prompt=ids[end - p:end].tolist(), prompt_len=p, max_tokens=o)
            for p, o, end in zip(prompt_lens, output_lens, ends)]
