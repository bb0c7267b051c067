"""The OpenAI wire format for the HF engine: request parsing with precise 4xx errors, and response bodies.

Every check raises ``APIError`` with a message that names the field and what was wrong, so a bad request costs
the client one round trip and the server nothing. Response and chunk shapes follow OpenAI's (and vLLM's):
``text_completion`` objects for completions, ``chat.completion.chunk`` deltas for chat.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from dataclasses import dataclass
from typing import Any

DEFAULT_COMPLETION_MAX_TOKENS = 16  # OpenAI's and vLLM's default for /v1/completions
DEFAULT_TEMPERATURE = 1.0  # OpenAI's default
_ERROR_TYPES = {400: "BadRequestError", 401: "AuthenticationError", 404: "NotFoundError",
                405: "MethodNotAllowedError", 413: "RequestEntityTooLargeError", 500: "InternalServerError"}
# Fields this baseline does not implement: refused rather than silently ignored (value -> what is accepted).
_UNSUPPORTED = {"n": (None, 1), "best_of": (None, 1), "stop": (None, [], ""), "stop_token_ids": (None, []),
                "logprobs": (None, False), "top_logprobs": (None, 0), "echo": (None, False),
                "suffix": (None, ""), "tools": (None, [])}


class APIError(Exception):
    """An error answered as OpenAI does: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, status: int, message: str, *, param: str | None = None, type: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.type = type or _ERROR_TYPES.get(status, "BadRequestError" if status < 500 else "InternalServerError")

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.status}}


def bad_request(message: str, param: str | None = None) -> APIError:
    return APIError(400, message, param=param)


@dataclass(frozen=True)
class SamplingParams:
    """The generation fields both endpoints share, validated. ``max_tokens`` None: the endpoint's default."""

    max_tokens: int | None
    temperature: float
    ignore_eos: bool
    min_tokens: int
    stream: bool
    include_usage: bool
    seed: int | None
    top_p: float = 1.0


def parse_body(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise bad_request(f"the request body is not valid JSON: {e}") from None
    except RecursionError:
        raise bad_request("the request body nests JSON too deeply to parse; send a flat OpenAI request") from None
    if not isinstance(body, dict):
        raise bad_request(f"the request body must be a JSON object, got {type(body).__name__}")
    return body


def check_model(body: dict[str, Any], served_name: str) -> None:
    """vLLM's rule: ``model`` may be left out; if given it must be the served name."""
    model = body.get("model")
    if model is None:
        return
    if not isinstance(model, str):
        raise bad_request(f"'model' must be a string, got {type(model).__name__}", "model")
    if model != served_name:
        raise APIError(404, f"The model `{model}` does not exist. This server serves `{served_name}`.",
                       param="model")


def check_unsupported(body: dict[str, Any]) -> None:
    for name, accepted in _UNSUPPORTED.items():
        if name in body and body[name] not in accepted:
            raise bad_request(f"'{name}' is not supported by the HF server (got {body[name]!r})", name)


def _int_field(body: dict[str, Any], name: str, default: int | None, minimum: int) -> int | None:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_request(f"'{name}' must be an integer, got {json.dumps(value)[:40]}", name)
    if value < minimum:
        raise bad_request(f"'{name}' must be >= {minimum}, got {value}", name)
    return value


def _bool_field(body: dict[str, Any], name: str, default: bool) -> bool:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise bad_request(f"'{name}' must be a boolean, got {json.dumps(value)[:40]}", name)
    return value


def parse_sampling(body: dict[str, Any], default_max_tokens: int | None) -> SamplingParams:
    check_unsupported(body)
    max_tokens = _int_field(body, "max_tokens", None, 1)
    if max_tokens is None:
        max_tokens = _int_field(body, "max_completion_tokens", default_max_tokens, 1)
    temperature = body.get("temperature")
    if temperature is None:
        temperature = DEFAULT_TEMPERATURE
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise bad_request(f"'temperature' must be a number, got {json.dumps(temperature)[:40]}", "temperature")
    if not math.isfinite(temperature) or temperature < 0:
        raise bad_request(f"'temperature' must be a finite number >= 0, got {temperature}", "temperature")
    min_tokens = _int_field(body, "min_tokens", 0, 0)
    assert min_tokens is not None
    if max_tokens is not None and min_tokens > max_tokens:
        raise bad_request(f"'min_tokens' ({min_tokens}) must be <= 'max_tokens' ({max_tokens})", "min_tokens")
    seed = _int_field(body, "seed", None, -(2**63))
    if seed is not None and seed >= 2**64:
        raise bad_request(f"'seed' must fit in 64 bits, got {seed}", "seed")
    top_p = body.get("top_p")
    if top_p is None:
        top_p = 1.0
    if isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
        raise bad_request(f"'top_p' must be a number in (0, 1], got {json.dumps(top_p)[:40]}", "top_p")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise bad_request("'stream_options' must be an object", "stream_options")
    stream = _bool_field(body, "stream", False)
    include_usage = _bool_field(options or {}, "include_usage", False)
    if options is not None and not stream:
        raise bad_request("'stream_options' is only allowed when 'stream' is true", "stream_options")
    return SamplingParams(max_tokens=max_tokens, temperature=float(temperature),
                          ignore_eos=_bool_field(body, "ignore_eos", False), min_tokens=min_tokens,
                          stream=stream, include_usage=include_usage, seed=seed, top_p=float(top_p))


def _is_token_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in value)


def parse_prompt(body: dict[str, Any]) -> str | list[int]:
    """A string, a list of token ids, or a batch of exactly one of those."""
    if "prompt" not in body or body["prompt"] is None:
        raise bad_request("'prompt' is required", "prompt")
    prompt = body["prompt"]
    if isinstance(prompt, list) and prompt and (isinstance(prompt[0], (str, list))):
        if len(prompt) != 1:
            raise bad_request(f"'prompt' may hold one prompt only (this server takes n=1), got {len(prompt)}",
                              "prompt")
        prompt = prompt[0]
    if isinstance(prompt, str):
        if not prompt:
            raise bad_request("'prompt' is empty", "prompt")
        return prompt
    if _is_token_list(prompt):
        if not prompt:
            raise bad_request("'prompt' is empty", "prompt")
        return prompt
    raise bad_request("'prompt' must be a string, a list of token ids (integers), or a list holding one of "
                      "those", "prompt")


def parse_messages(body: dict[str, Any]) -> list[dict[str, str]]:
    """Messages with string roles and text content (a string, or a list of text parts)."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("'messages' must be a non-empty list of {role, content} objects", "messages")
    parsed = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise bad_request(f"messages[{i}] must be an object with a string 'role'", "messages")
        content = message.get("content")
        if content is None:
            content = ""
        if isinstance(content, list):
            parts = []
            for part in content:
                if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                    raise bad_request(f"messages[{i}].content: only text parts are supported", "messages")
                parts.append(part["text"])
            content = "".join(parts)
        if not isinstance(content, str):
            raise bad_request(f"messages[{i}].content must be a string or a list of text parts", "messages")
        parsed.append({"role": message["role"], "content": content})
    return parsed


class ResponseFormat:
    """Bodies and stream chunks of one request, for ``completions`` or ``chat``."""

    def __init__(self, endpoint: str, model: str) -> None:
        self.chat = endpoint == "chat"
        self.model = model
        self.id = ("chatcmpl-" if self.chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())
        self.object = "chat.completion.chunk" if self.chat else "text_completion"

    def _envelope(self, object_: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {"id": self.id, "object": object_, "created": self.created, "model": self.model, "choices": choices}

    def opening_chunks(self) -> list[dict[str, Any]]:
        """Chat streams start with a role-only delta; completion streams start with the first token."""
        if not self.chat:
            return []
        delta = {"role": "assistant", "content": ""}
        return [self._envelope(self.object, [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}])]

    def token_chunk(self, text: str, finish_reason: str | None) -> dict[str, Any]:
        if self.chat:
            choice = {"index": 0, "delta": {"content": text}, "logprobs": None, "finish_reason": finish_reason}
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
        return self._envelope(self.object, [choice])

    def usage_chunk(self, prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
        return {**self._envelope(self.object, []), "usage": usage(prompt_tokens, completion_tokens)}

    def full_response(self, text: str, finish_reason: str, prompt_tokens: int,
                      completion_tokens: int) -> dict[str, Any]:
        if self.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                      "finish_reason": finish_reason}
            object_ = "chat.completion"
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
            object_ = "text_completion"
        return {**self._envelope(object_, [choice]), "usage": usage(prompt_tokens, completion_tokens)}


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}
