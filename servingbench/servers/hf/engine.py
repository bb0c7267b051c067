"""The HF Transformers engine: one static batch at a time through a plain decode loop.

This is the naive-but-honest reference vLLM is compared with: the same math as ``model.generate`` (left padding,
an attention mask, position ids from the mask, a KV cache, logits of the last position only, greedy or sampled
with a seeded generator) and no tricks (no paging, no continuous batching, no compiled graphs). A batch runs until
its longest member ends; finished rows keep decoding a pad token, exactly as ``generate`` does.

``generate_stream`` is the primitive the HTTP server builds on: it yields the tokens of each step as they are
produced, with their text deltas, so every token can leave as its own SSE chunk.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, DynamicCache

DUMMY_SEED = 0  # random init of --load-format dummy, so two runs serve the same weights
SAMPLING_SEED = 0  # the engine's generator, which seeds requests that bring no seed of their own


class RequestError(ValueError):
    """A request the engine cannot run (empty prompt, unknown token id, too long); the message says which."""


@dataclass(frozen=True)
class Generation:
    """One prompt's result, in the shape of the lab's ``generate`` API."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    ttft_s: float  # from the call to this sequence's first token
    e2e_s: float  # from the call to this sequence's last token
    finish_reason: str  # "length" | "stop"
    token_ids: list[int] = field(default_factory=list)


@dataclass(eq=False)
class SequenceRequest:
    """One sequence of a batch. ``cancelled`` may be set from another thread; the loop drops it next step."""

    prompt_ids: list[int]
    max_tokens: int
    temperature: float = 0.0
    ignore_eos: bool = False
    min_tokens: int = 0  # the end-of-sequence token is suppressed until this many tokens exist
    seed: int | None = None
    cancelled: bool = False
    top_p: float = 1.0  # nucleus sampling: draw from the smallest set of tokens whose probability reaches top_p


@dataclass(frozen=True)
class TokenEvent:
    """A token one sequence produced in one step; ``finish_reason`` is set on its last token."""

    index: int  # position of the sequence in the batch
    token_id: int
    text_delta: str
    finish_reason: str | None = None


class IncrementalDetokenizer:
    """Text deltas whose concatenation is the decoded output: decode all ids, emit the new suffix.

    A suffix that ends in U+FFFD (a multi-byte character cut in half) is held back until it completes.
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.token_ids: list[int] = []
        self.text = ""

    def push(self, token_id: int) -> str:
        self.token_ids.append(token_id)
        return self._advance(final=False)

    def flush(self) -> str:
        """Whatever was held back, for the last token."""
        return self._advance(final=True)

    def _advance(self, final: bool) -> str:
        full = self.tokenizer.decode(self.token_ids, skip_special_tokens=True)
        if not final and full.endswith("\ufffd"):
            return ""
        if full.startswith(self.text):
            delta = full[len(self.text):]
        else:  # the decoder rewrote earlier text; what was sent stays sent, so only append what follows
            common = 0
            while common < min(len(full), len(self.text)) and full[common] == self.text[common]:
                common += 1
            delta = full[max(common, len(self.text)):] if final else ""
        self.text += delta
        return delta


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype, config: Any) -> torch.dtype:
    """``auto`` is the checkpoint's dtype (``dtype`` or ``torch_dtype`` in config.json), else float32."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        dtype = str(getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or "float32")
    name = dtype.removeprefix("torch.")
    aliases = {"half": "float16", "fp16": "float16", "float": "float32", "fp32": "float32", "bf16": "bfloat16"}
    resolved = getattr(torch, aliases.get(name, name), None)
    if not isinstance(resolved, torch.dtype) or not resolved.is_floating_point:
        raise ValueError(f"unsupported dtype {dtype!r}: use auto, float32, float16 or bfloat16")
    return resolved


class HFBaselineServer:
    """A model, its tokenizer and a static-batch decode loop. Not thread-safe: one thread should own it."""

    def __init__(self, model: str, *, dtype: str = "auto", device: str = "auto", threads: int | None = None,
                 load_format: str = "auto", max_model_len: int | None = None, step_delay_ms: float = 0.0) -> None:
        if model.startswith(("/", ".", "~")) and not Path(model).expanduser().is_dir():
            raise ValueError(f"model directory {model} does not exist")
        self.model_path = model
        self.device = resolve_device(device)
        if self.device.type == "cpu":
            # vLLM's CPU build computes on one thread on this 2-core machine; the baseline gets the same.
            torch.set_num_threads(threads or 1)
        elif threads:
            torch.set_num_threads(threads)
        self.config = AutoConfig.from_pretrained(model)
        self.dtype = resolve_dtype(dtype, self.config)
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.model = self._load(model, load_format)
        self.model.eval()
        self.vocab_size = int(self.model.config.vocab_size)
        self.max_model_len = self._context_length(max_model_len)
        self.eos_token_ids = self._eos_ids()
        pad = self.model.config.pad_token_id
        if pad is None:
            pad = self.tokenizer.pad_token_id
        self.pad_token_id = int(pad if pad is not None else min(self.eos_token_ids, default=0))
        self._generator = torch.Generator(device=self.device).manual_seed(SAMPLING_SEED)
        # A slowdown of known size, as real server behaviour (every decode step takes this much longer): how the
        # gate's power benchmark injects a regression without editing any figure afterwards.
        self.step_delay_s = step_delay_ms / 1000.0

    def _load(self, model: str, load_format: str) -> torch.nn.Module:
        if load_format == "dummy":  # only config.json on disk: random weights made directly on the device
            torch.manual_seed(DUMMY_SEED)
            with torch.device(self.device):
                return AutoModelForCausalLM.from_config(self.config, dtype=self.dtype)
        if load_format != "auto":
            raise ValueError(f"unsupported load format {load_format!r}: use auto or dummy")
        loaded = AutoModelForCausalLM.from_pretrained(model, dtype=self.dtype)
        return loaded.to(self.device)

    def _context_length(self, max_model_len: int | None) -> int:
        limit = getattr(self.config, "max_position_embeddings", None)
        if max_model_len is None:
            if limit is None:
                raise ValueError(f"{self.model_path} has no max_position_embeddings: pass --max-model-len")
            return int(limit)
        if max_model_len < 1 or (limit is not None and max_model_len > limit):
            raise ValueError(f"max_model_len {max_model_len} must be between 1 and the model's "
                             f"max_position_embeddings ({limit})")
        return int(max_model_len)

    def _eos_ids(self) -> set[int]:
        ids: set[int] = set()
        sources = [getattr(self.model, "generation_config", None), self.model.config]
        for source in sources:
            value = getattr(source, "eos_token_id", None) if source is not None else None
            if value is not None:
                ids.update(value if isinstance(value, (list, tuple)) else [value])
        if not ids and self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        return {int(i) for i in ids}

    # ---- validation ---------------------------------------------------------------------------------------

    def encode(self, prompt: str | list[int]) -> list[int]:
        """Token ids of a prompt: text is tokenized as vLLM does (special tokens added), ids are checked."""
        ids = self.tokenizer(prompt, add_special_tokens=True).input_ids if isinstance(prompt, str) else list(prompt)
        self.check_prompt(ids)
        return ids

    def check_prompt(self, ids: Sequence[int]) -> None:
        if not ids:
            raise RequestError("the prompt is empty: send at least one token")
        bad = next((t for t in ids if not 0 <= t < self.vocab_size), None)
        if bad is not None:
            raise RequestError(f"token id {bad} in the prompt is out of vocabulary (valid ids: 0 to "
                               f"{self.vocab_size - 1})")

    def check_fits(self, prompt_len: int, max_tokens: int) -> None:
        """prompt + completion must fit the context; the message has vLLM's wording."""
        if max_tokens < 1:
            raise RequestError(f"max_tokens must be at least 1, got {max_tokens}")
        if prompt_len + max_tokens > self.max_model_len:
            raise RequestError(
                f"This model's maximum context length is {self.max_model_len} tokens. However, you requested "
                f"{prompt_len + max_tokens} tokens ({prompt_len} in the prompt, {max_tokens} in the completion). "
                "Please reduce the length of the prompt or max_tokens.")

    def check_request(self, request: SequenceRequest) -> None:
        self.check_prompt(request.prompt_ids)
        self.check_fits(len(request.prompt_ids), request.max_tokens)
        if request.temperature < 0:
            raise RequestError(f"temperature must be >= 0, got {request.temperature}")
        if request.min_tokens < 0:
            raise RequestError(f"min_tokens must be >= 0, got {request.min_tokens}")

    # ---- generation ---------------------------------------------------------------------------------------

    def generate(self, prompts: Sequence[str | list[int]], max_tokens: int, *, temperature: float = 0.0,
                 ignore_eos: bool = False) -> list[Generation]:
        """All prompts as one static batch; timings are per sequence, from this call."""
        t0 = time.perf_counter()
        requests = [SequenceRequest(self.encode(p), max_tokens, temperature, ignore_eos) for p in prompts]
        first: dict[int, float] = {}
        last: dict[int, float] = {}
        finish: dict[int, str] = {}
        ids: list[list[int]] = [[] for _ in requests]
        for events in self.generate_stream(requests):
            now = time.perf_counter() - t0
            for ev in events:
                first.setdefault(ev.index, now)
                last[ev.index] = now
                ids[ev.index].append(ev.token_id)
                if ev.finish_reason:
                    finish[ev.index] = ev.finish_reason
        return [
            Generation(text=self.tokenizer.decode(ids[i], skip_special_tokens=True),
                       prompt_tokens=len(r.prompt_ids), completion_tokens=len(ids[i]), ttft_s=first[i],
                       e2e_s=last[i], finish_reason=finish[i], token_ids=ids[i])
            for i, r in enumerate(requests)
        ]

    def generate_stream(self, requests: Sequence[SequenceRequest]) -> Iterator[list[TokenEvent]]:
        """Run ``requests`` as one batch; yield each step's new tokens (one event per live sequence)."""
        if not requests:
            return
        for request in requests:
            self.check_request(request)
        input_ids, mask = self._left_pad([r.prompt_ids for r in requests])
        positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
        cache = DynamicCache(config=self.model.config)
        detokenizers = [IncrementalDetokenizer(self.tokenizer) for _ in requests]
        generators = [self._sequence_generator(r) for r in requests]
        done = [False] * len(requests)
        logits = self._forward(input_ids, mask, positions, cache)
        while True:
            for i, request in enumerate(requests):
                done[i] = done[i] or request.cancelled
            if all(done):
                return
            next_ids = self._select(logits, requests, detokenizers, generators, done)
            events = []
            for i, request in enumerate(requests):
                if done[i]:
                    continue
                token = next_ids[i]
                delta = detokenizers[i].push(token)
                count = len(detokenizers[i].token_ids)
                reason = None
                if token in self.eos_token_ids and not request.ignore_eos and count >= request.min_tokens:
                    reason = "stop"
                elif count >= request.max_tokens:
                    reason = "length"
                if reason:
                    done[i] = True
                    delta += detokenizers[i].flush()
                events.append(TokenEvent(i, token, delta, reason))
            yield events
            if all(done):
                return
            step_ids = torch.tensor([[self.pad_token_id if done[i] else t] for i, t in enumerate(next_ids)],
                                    device=self.device)
            mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=-1)
            positions = positions[:, -1:] + 1
            logits = self._forward(step_ids, mask, positions, cache)
            if self.step_delay_s:
                time.sleep(self.step_delay_s)

    def _left_pad(self, prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            ids[row, width - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
            mask[row, width - len(prompt):] = 1
        return ids.to(self.device), mask.to(self.device)

    def _sequence_generator(self, request: SequenceRequest) -> torch.Generator | None:
        if request.temperature == 0:
            return None
        seed = request.seed
        if seed is None:
            seed = int(torch.randint(0, 2**62, (1,), generator=self._generator, device=self.device).item())
        return torch.Generator(device=self.device).manual_seed(seed)

    @torch.inference_mode()
    def _forward(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor,
                 cache: DynamicCache) -> torch.Tensor:
        """Logits of the last position, in float32 (as ``generate`` processes them)."""
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                         use_cache=True, logits_to_keep=1)
        return out.logits[:, -1, :].float()

    @torch.inference_mode()
    def _select(self, logits: torch.Tensor, requests: Sequence[SequenceRequest],
                detokenizers: list[IncrementalDetokenizer], generators: list[torch.Generator | None],
                done: list[bool]) -> list[int]:
        """Greedy rows take the argmax, sampling rows draw from softmax(logits / T) with their own generator."""
        eos = sorted(self.eos_token_ids)
        for i, request in enumerate(requests):
            if not done[i] and eos and len(detokenizers[i].token_ids) < request.min_tokens:
                logits[i, eos] = float("-inf")
        chosen = logits.argmax(dim=-1)
        for i, request in enumerate(requests):
            if not done[i] and request.temperature > 0:
                probs = torch.softmax(logits[i] / request.temperature, dim=-1)
                if request.top_p < 1.0:
                    probs = nucleus(probs, request.top_p)
                chosen[i] = torch.multinomial(probs, 1, generator=generators[i])[0]
        return chosen.tolist()


def nucleus(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """``probs`` with every token outside the top-p nucleus set to 0 (the most likely token always stays)."""
    sorted_p, order = torch.sort(probs, descending=True)
    keep = (torch.cumsum(sorted_p, dim=-1) - sorted_p) < top_p
    out = torch.zeros_like(probs)
    out[order[keep]] = sorted_p[keep]
    return out
