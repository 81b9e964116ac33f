"""The HTTP face of the extender: thin aiohttp handlers over `wire`, `cache` and `bind`.

Hygiene, because kube-scheduler waits on every answer with `ignorable: false`: verbs are POST only, with a JSON
content type, a body-size cap, a read timeout and a handler timeout below the scheduler's `httpTimeout`. Any
malformed request gets a 4xx with a JSON `{"Error": ...}` body and the server keeps serving; an unexpected
failure gets a 500 with a JSON body and a log line, never a dropped connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from extender.answers import FilterAnswer
from extender.bind import Binder
from extender.cache import ClusterView
from extender.metrics import CONTENT_TYPE_LATEST, REJECT_REASONS, VERBS, ExtenderMetrics
from extender.wire import (
    ExtenderArgs,
    WireError,
    decode_json,
    encode_binding_result,
    encode_error,
    encode_filter_reply,
    encode_filter_result,
    encode_priorities,
    parse_binding_args,
    parse_extender_args,
)
from neuronlog import get_logger

__all__ = ["ServerSettings", "build_app", "build_metrics_app", "filter_answer", "priority_reply"]

log = get_logger(__name__)

_JSON = "application/json"
_VERBS = {f"/{verb}": verb for verb in VERBS}
_STANDALONE = (
    "the extender runs with --standalone (no API server): it has no node cache, so it answers only "
    "Nodes-mode requests (nodeCacheCapable: false) and cannot bind"
)


@dataclass(frozen=True, slots=True)
class ServerSettings:
    # A 5,000-node Nodes-mode request with full Node objects is tens of MB; NodeNames mode is ~100 KB.
    max_body_bytes: int = 64 * 1024 * 1024
    read_timeout: float = 10.0
    # Below the 5 s httpTimeout of deploy/scheduler: the scheduler gets our JSON error, not its own timeout.
    handler_timeout: float = 4.5
    standalone: bool = False
    serve_metrics: bool = True  # False when --metrics-port puts /metrics on a port of its own


class _HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _json_response(body: bytes, status: int = 200) -> web.Response:
    return web.Response(body=body, status=status, content_type=_JSON)


def filter_answer(view: ClusterView, args: ExtenderArgs) -> FilterAnswer:
    """Filter's answer in the request's mode: from the memo for NodeNames, node by node for Nodes."""
    request = args.pod.request
    if args.node_names is not None:
        return view.filter_answer(args.node_names, request)
    nodes = args.nodes or ()
    view.expire_remembered()
    return FilterAnswer.of((n.name for n in nodes), (view.verdict_for(n, request, scored=False) for n in nodes))


def priority_reply(view: ClusterView, args: ExtenderArgs) -> bytes:
    """Prioritize's HostPriorityList in the request's mode."""
    request = args.pod.request
    if args.node_names is not None:
        return view.priority_reply(args.node_names, request)
    nodes = args.nodes or ()
    view.expire_remembered()
    return encode_priorities((n.name, view.verdict_for(n, request, scored=True).score) for n in nodes)


def build_app(
    settings: ServerSettings, view: ClusterView, binder: Binder | None, metrics: ExtenderMetrics
) -> web.Application:
    async def read_json(request: web.Request) -> Any:
        if request.content_type != _JSON:
            raise _HttpError(415, f"Content-Type must be {_JSON}, got {request.content_type or 'none'!r}")
        length = request.content_length
        if length is not None and length > settings.max_body_bytes:
            raise _HttpError(413, f"body of {length} bytes is above the cap of {settings.max_body_bytes}")
        try:
            async with asyncio.timeout(settings.read_timeout):
                body = await request.read()
        except TimeoutError:
            raise _HttpError(408, f"body not received within {settings.read_timeout} s") from None
        except web.HTTPRequestEntityTooLarge:
            raise _HttpError(413, f"body is above the cap of {settings.max_body_bytes} bytes") from None
        try:
            return decode_json(body)
        except WireError as err:
            raise _HttpError(400, str(err)) from None

    async def parse_args(request: web.Request) -> ExtenderArgs:
        try:
            return parse_extender_args(await read_json(request))
        except WireError as err:
            raise _HttpError(400, str(err)) from None

    def cache_problem(args: ExtenderArgs) -> str:
        if args.node_names is None:
            return ""
        if settings.standalone:
            return _STANDALONE
        if not view.synced:
            return "the node cache has not finished its first list from the API server yet; retry"
        return ""

    async def filter_handler(request: web.Request) -> web.Response:
        args = await parse_args(request)
        problem = cache_problem(args)
        if problem:
            request["result"] = "error"
            return _json_response(encode_filter_result(args, (), {}, {}, error=problem))
        answer = filter_answer(view, args)
        passed = answer.passed
        metrics.rejected("unresolvable", answer.unresolvable)
        metrics.rejected("unknown_node", answer.unknown)
        metrics.rejected("no_block", answer.failed - answer.unknown)
        pod = args.pod
        if not pod.request.empty:
            metrics.pod_schedulable(pod.key, {n.resource.short for n in pod.request.needs}, bool(passed))
        if not passed and pod.request.needs:
            log.info(
                "filter.no_node", pod=pod.key, candidates=len(args.names), failed=answer.failed,
                unresolvable=answer.unresolvable, rule=answer.example,
            )  # fmt: skip
        return _json_response(encode_filter_reply(args, passed, answer.failed_members, answer.unresolvable_members))

    async def prioritize_handler(request: web.Request) -> web.Response:
        args = await parse_args(request)
        problem = cache_problem(args)
        if problem:
            # HostPriorityList has no error field: an HTTP error is the only way to say it.
            raise _HttpError(400 if settings.standalone else 503, problem)
        return _json_response(priority_reply(view, args))

    async def bind_handler(request: web.Request) -> web.Response:
        try:
            args = parse_binding_args(await read_json(request))
        except WireError as err:
            raise _HttpError(400, str(err)) from None
        if binder is None:
            request["result"] = "error"
            return _json_response(encode_binding_result(_STANDALONE))
        outcome = await binder.bind(args)
        if not outcome.ok:
            request["result"] = "error"
            if outcome.reason in REJECT_REASONS:
                metrics.rejected(outcome.reason)
        return _json_response(encode_binding_result(outcome.error))

    async def healthz(_: web.Request) -> web.Response:
        return _json_response(b'{"status":"ok"}')

    async def readyz(_: web.Request) -> web.Response:
        if settings.standalone or view.synced:
            return _json_response(b'{"status":"ready"}')
        return _json_response(encode_error("node and pod caches have not finished their first list"), 503)

    @web.middleware
    async def guard(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        verb = _VERBS.get(request.path)
        started = time.perf_counter()
        result = "ok"
        try:
            with view.serving():
                async with asyncio.timeout(settings.handler_timeout):
                    response = await handler(request)
            result = request.get("result", "ok")
            return response
        except _HttpError as err:
            result = "bad_request" if err.status < 500 else "error"
            log.warning("request.rejected", path=request.path, status=err.status, error=err.message)
            return _json_response(encode_error(err.message), err.status)
        except web.HTTPException as err:  # aiohttp's own: 404, 405, 413...
            result = "bad_request" if err.status < 500 else "error"
            return _json_response(encode_error(f"{err.status} {err.reason}: {request.method} {request.path}"),
                                  err.status)  # fmt: skip
        except TimeoutError:
            result = "error"
            log.error("request.timeout", path=request.path, timeout_seconds=settings.handler_timeout)
            return _json_response(encode_error(f"no answer within {settings.handler_timeout} s"), 503)
        except Exception:
            result = "error"
            log.exception("request.failed", path=request.path)
            return _json_response(encode_error("internal error; see the extender's log"), 500)
        finally:
            if verb is not None:
                metrics.observe(verb, result, time.perf_counter() - started)

    async def warmer(_: web.Application) -> AsyncIterator[None]:
        task = None if settings.standalone else asyncio.create_task(view.warm_forever())
        yield
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    app = web.Application(middlewares=[guard], client_max_size=settings.max_body_bytes)
    app.cleanup_ctx.append(warmer)
    app.router.add_post("/filter", filter_handler)
    app.router.add_post("/prioritize", prioritize_handler)
    app.router.add_post("/bind", bind_handler)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    if settings.serve_metrics:
        _add_metrics_route(app, metrics)
    return app


def _add_metrics_route(app: web.Application, metrics: ExtenderMetrics) -> None:
    async def metrics_handler(_: web.Request) -> web.Response:
        response = web.Response(body=metrics.exposition())
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    app.router.add_get("/metrics", metrics_handler)


def build_metrics_app(metrics: ExtenderMetrics) -> web.Application:
    """/metrics alone, for --metrics-port."""
    app = web.Application()
    _add_metrics_route(app, metrics)
    return app
