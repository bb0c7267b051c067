"""An OpenAI-compatible HTTP server over the HF engine (aiohttp).

Endpoints: ``GET /health``, ``GET /v1/models``, ``POST /v1/completions``, ``POST /v1/chat/completions``. Requests
are validated on the event loop (bad input is a 4xx with an OpenAI error body, never a 500), then queued for the
single worker thread (see ``hf_scheduler``); tokens stream back one SSE chunk each as they are produced. A client
that disconnects has its request cancelled. With an API key, every ``/v1/*`` request needs ``Bearer <key>``.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import signal
from dataclasses import dataclass
from typing import Awaitable, Callable

from aiohttp import web

from servingbench.servers.hf.engine import HFBaselineServer, RequestError, SequenceRequest, TokenEvent
from servingbench.servers.hf.protocol import (DEFAULT_COMPLETION_MAX_TOKENS, APIError, ResponseFormat, SamplingParams, bad_request, check_model, parse_body, parse_messages, parse_prompt, parse_sampling)
from servingbench.servers.events import sse_event
from servingbench.servers.hf.scheduler import InferenceWorker, PendingRequest, WorkerFailure

log = logging.getLogger("servingbench.hf")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class ServingState:
    engine: HFBaselineServer
    worker: InferenceWorker
    served_model_name: str
    api_key: str | None


STATE = web.AppKey("state", ServingState)


def error_response(error: APIError) -> web.Response:
    return web.json_response(error.body(), status=error.status)


@web.middleware
async def openai_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure leaves as an OpenAI error body: client mistakes as 4xx, our own bugs as a bare 500."""
    try:
        return await handler(request)
    except APIError as e:
        return error_response(e)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        return error_response(APIError(e.status, f"{e.reason}: {request.method} {request.path}"))
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:
        log.exception("internal error on %s %s", request.method, request.path)
        return error_response(APIError(500, "internal server error"))


@web.middleware
async def bearer_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    """``/v1/*`` needs the key when one is set; ``/health`` stays open for the lifecycle's polling."""
    key = request.app[STATE].api_key
    if key and request.path.startswith("/v1"):
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {key}".encode()):
            raise APIError(401, "Unauthorized: send the API key as 'Authorization: Bearer <key>'")
    return await handler(request)


async def health(request: web.Request) -> web.Response:
    return web.Response(text="")


async def list_models(request: web.Request) -> web.Response:
    state = request.app[STATE]
    card = {"id": state.served_model_name, "object": "model", "created": 0, "owned_by": "servingbench",
            "root": state.engine.model_path, "max_model_len": state.engine.max_model_len}
    return web.json_response({"object": "list", "data": [card]})


async def completions(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    body = parse_body(await request.read())
    check_model(body, state.served_model_name)
    params = parse_sampling(body, DEFAULT_COMPLETION_MAX_TOKENS)
    prompt_ids = _encode(state.engine, parse_prompt(body), add_special_tokens=True, param="prompt")
    return await _serve(request, "completions", prompt_ids, params)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    body = parse_body(await request.read())
    check_model(body, state.served_model_name)
    params = parse_sampling(body, None)  # None: whatever context is left after the prompt
    messages = parse_messages(body)
    tokenizer = state.engine.tokenizer
    if not getattr(tokenizer, "chat_template", None):
        raise bad_request("this model's tokenizer has no chat template; use /v1/completions", "messages")
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception as e:  # a template may raise on roles it does not know
        raise bad_request(f"the chat template rejected the messages: {e}", "messages") from None
    prompt_ids = _encode(state.engine, text, add_special_tokens=False, param="messages")  # template adds them
    return await _serve(request, "chat", prompt_ids, params)


def _encode(engine: HFBaselineServer, prompt: str | list[int], *, add_special_tokens: bool,
            param: str) -> list[int]:
    """Text is tokenized as vLLM does (completions add special tokens, chat templates bring their own)."""
    ids = engine.tokenizer(prompt, add_special_tokens=add_special_tokens).input_ids \
        if isinstance(prompt, str) else prompt
    try:
        engine.check_prompt(ids)
    except RequestError as e:
        raise bad_request(str(e), param) from None
    return ids


async def _serve(request: web.Request, endpoint: str, prompt_ids: list[int],
                 params: SamplingParams) -> web.StreamResponse:
    state = request.app[STATE]
    engine = state.engine
    max_tokens = params.max_tokens
    if max_tokens is None:
        max_tokens = engine.max_model_len - len(prompt_ids)
        if max_tokens < 1:
            raise bad_request(f"This model's maximum context length is {engine.max_model_len} tokens and the "
                              f"prompt has {len(prompt_ids)}: no room is left for a completion", "messages")
    try:
        engine.check_fits(len(prompt_ids), max_tokens)
    except RequestError as e:
        raise bad_request(str(e), "max_tokens" if max_tokens < 1 else "prompt") from None
    if params.min_tokens > max_tokens:
        raise bad_request(f"'min_tokens' ({params.min_tokens}) must be <= max_tokens ({max_tokens})",
                          "min_tokens")
    sequence = SequenceRequest(prompt_ids, max_tokens, params.temperature, params.ignore_eos, params.min_tokens,
                               params.seed, top_p=params.top_p)
    pending = PendingRequest(sequence, asyncio.get_running_loop())
    fmt = ResponseFormat(endpoint, state.served_model_name)
    state.worker.submit(pending)
    try:
        if params.stream:
            return await _stream(request, pending, fmt, params.include_usage)
        return await _collect(pending, fmt)
    finally:
        if not pending.finished:  # the client left (or we failed): stop generating for it
            pending.cancel()
            log.info("request %s cancelled: the client disconnected", fmt.id)


async def _next_event(pending: PendingRequest) -> TokenEvent:
    item = await pending.events.get()
    if isinstance(item, WorkerFailure):
        raise APIError(item.status, item.message,
                       type="ServiceUnavailableError" if item.status == 503 else "InternalServerError")
    return item


async def _collect(pending: PendingRequest, fmt: ResponseFormat) -> web.Response:
    parts: list[str] = []
    count = 0
    while True:
        event = await _next_event(pending)
        parts.append(event.text_delta)
        count += 1
        if event.finish_reason:
            body = fmt.full_response("".join(parts), event.finish_reason, len(pending.sequence.prompt_ids), count)
            return web.json_response(body)


async def _stream(request: web.Request, pending: PendingRequest, fmt: ResponseFormat,
                  include_usage: bool) -> web.StreamResponse:
    """One chunk per token; finish_reason on the last; then usage (if asked) and [DONE]."""
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)
    count = 0
    try:
        for chunk in fmt.opening_chunks():
            await response.write(sse_event(chunk))
        while True:
            try:
                event = await _next_event(pending)
            except APIError as e:  # headers are gone: the error travels in the stream
                await response.write(sse_event(e.body()))
                break
            count += 1
            await response.write(sse_event(fmt.token_chunk(event.text_delta, event.finish_reason)))
            if event.finish_reason:
                if include_usage:
                    await response.write(sse_event(fmt.usage_chunk(len(pending.sequence.prompt_ids), count)))
                break
        await response.write(sse_event("[DONE]"))
        await response.write_eof()
    except ConnectionResetError:  # the client went away mid-stream; ``_serve`` cancels the request
        pass
    return response


def build_app(engine: HFBaselineServer, served_model_name: str, *, max_batch_size: int = 1,
              batch_wait_ms: float = 20.0, api_key: str | None = None) -> web.Application:
    """The application; its worker thread starts with the app and stops when the app shuts down."""
    worker = InferenceWorker(engine, max_batch_size, batch_wait_ms / 1000.0)
    app = web.Application(middlewares=[openai_errors, bearer_auth], client_max_size=64 * 1024 * 1024)
    app[STATE] = ServingState(engine, worker, served_model_name, api_key or None)
    app.router.add_get("/health", health)
    app.router.add_get("/v1/models", list_models)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/chat/completions", chat_completions)

    async def start_worker(app: web.Application) -> None:
        worker.start()

    async def stop_worker(app: web.Application) -> None:  # before open requests are awaited: ends them
        await asyncio.get_running_loop().run_in_executor(None, worker.stop)

    app.on_startup.append(start_worker)
    app.on_shutdown.append(stop_worker)
    return app


async def serve(app: web.Application, host: str, port: int, ready_message: str = "") -> None:
    """Serve until SIGTERM or SIGINT. Handlers are cancelled when their client disconnects."""
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=5.0)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        if ready_message:
            log.info(ready_message)
        await stop.wait()
        log.info("shutting down")
    finally:
        await runner.cleanup()


def run_server(model: str, *, host: str = "127.0.0.1", port: int = 8000, served_model_name: str | None = None,
               dtype: str = "auto", device: str = "auto", threads: int | None = None, load_format: str = "auto",
               max_model_len: int | None = None, max_batch_size: int = 1, batch_wait_ms: float = 20.0,
               api_key: str | None = None, step_delay_ms: float = 0.0) -> None:
    """Load the model, then serve it; returns when the server is stopped."""
    name = served_model_name or model
    engine = HFBaselineServer(model, dtype=dtype, device=device, threads=threads, load_format=load_format,
                              max_model_len=max_model_len, step_delay_ms=step_delay_ms)
    log.info("loaded %s: dtype %s, device %s, max_model_len %d, max_batch_size %d, api key %s", model,
             str(engine.dtype).removeprefix("torch."), engine.device, engine.max_model_len, max_batch_size,
             "required" if api_key else "off")
    app = build_app(engine, name, max_batch_size=max_batch_size, batch_wait_ms=batch_wait_ms, api_key=api_key)
    asyncio.run(serve(app, host, port, f"servingbench HF engine serving {name} on http://{host}:{port}"))
