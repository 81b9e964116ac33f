"""The HTTP face of the extender: thin aiohttp handlers over `wire`, `cache` and `bind`.

Hygiene, because kube-scheduler waits on every answer with `ignorable: false`: verbs are POST only, with a JSON
content type. The body is read here, before any handler runs: capped by verb and mode (`limits.BodyCaps`, 413),
charged to one budget for every body in flight at its estimated decoded size (`limits.Budget`; over it, 503 and
the client retries: the extender sheds load, it does not run out of memory), and received within
`read_timeout` (408). The handler timeout starts once the body is in, below the scheduler's `httpTimeout`.
Any malformed request gets a 4xx with a JSON `{"Error": ...}` body and the server keeps serving; an unexpected
failure gets a 500 with a JSON body and a log line, never a dropped connection. Rejections are logged at most
once per kind per interval (with a count of those suppressed) and counted in full in
`neuron_contig_extender_http_rejected_total`. Connections themselves are bounded by `extender.listener`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from extender.bind import Binder
from extender.cache import ClusterStore
from extender.forward import DEADLINE_HEADER, FORWARDED_HEADER
from extender.limits import BodyCaps, Budget, Reservation, decoded_estimate
from extender.metrics import CONTENT_TYPE_LATEST, REJECT_REASONS, VERBS, ExtenderMetrics
from extender.ratelog import Throttle
from extender.verdicts import Verdicts
from extender.wire import (
    ExtenderArgs,
    WireError,
    decode_json,
    encode_binding_result,
    encode_error,
    encode_filter_reply,
    encode_filter_result,
    parse_binding_args,
    parse_extender_args,
)
from neuronlog import get_logger

__all__ = ["Handlers", "HttpError", "Reply", "ServerSettings", "build_app", "build_metrics_app"]

log = get_logger(__name__)

_JSON = "application/json"
# /filter-best is filter that passes only the best-scoring nodes (`ServerSettings.best_nodes`): one round trip in
# the scheduler's serial cycle instead of filter and prioritize, and fewer nodes for its own score plugins.
_FILTER_BEST = "/filter-best"
_VERBS = {**{f"/{verb}": verb for verb in VERBS}, _FILTER_BEST: "filter"}
_READS_MEMO = frozenset({"filter", "prioritize"})
# A body the parser could not read (a malformed chunk, a connection cut mid-body).
_UNREADABLE_BODY = (RequestPayloadError, ConnectionError)
_STANDALONE = (
    "the extender runs with --standalone (no API server): it has no node cache, so it answers only "
    "Nodes-mode requests (nodeCacheCapable: false) and cannot bind"
)


_MiB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class ServerSettings:
    # Nodes mode (full Node objects, --standalone): tens of MB at 5,000 nodes. NodeNames mode: the pod and the
    # names, ~100 KB at 5,000 nodes, but a pod may be up to 1.5 MiB. See `limits.BodyCaps`.
    max_body_bytes: int = 64 * _MiB
    max_names_body_bytes: int = 4 * _MiB
    # Estimated decoded size of every body in flight together (`limits.decoded_estimate`).
    max_inflight_bytes: int = 192 * _MiB
    read_timeout: float = 10.0
    # Below the 5 s httpTimeout of deploy/scheduler: the scheduler gets our JSON error, not its own timeout.
    handler_timeout: float = 4.5
    standalone: bool = False
    best_nodes: int = 8  # the most nodes /filter-best passes
    serve_metrics: bool = True  # False when --metrics-port puts /metrics on a port of its own


class HttpError(Exception):
    """A request refused with `status`; `reason` labels the http_rejected metric when the HTTP layer refused it;
    `close` when its body was not read to the end (the connection cannot carry another request)."""

    def __init__(self, status: int, message: str, *, reason: str = "", close: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.reason = reason
        self.close = close


def _json_response(body: bytes, status: int = 200) -> web.Response:
    return web.Response(body=body, status=status, content_type=_JSON)


@dataclass(frozen=True, slots=True)
class Reply:
    """A verb's answer: the JSON body, its status, and the result label for the verb's metric."""

    body: bytes
    result: str = "ok"  # ok | error (an answer the scheduler reads as a failure)
    status: int = 200


class Handlers:
    """The extender's verbs and the guard every request passes. `filter`, `prioritize` and `bind` take a body
    already read and answer a `Reply`, so tests call them directly; `guard` (the middleware) reads the body within
    its caps, the budget and the read timeout, applies the handler timeout, maps errors to JSON answers and
    observes each verb once."""

    def __init__(
        self, settings: ServerSettings, verdicts: Verdicts, binder: Binder | None, metrics: ExtenderMetrics
    ) -> None:
        self.settings = settings
        self.verdicts = verdicts
        self.binder = binder
        self.metrics = metrics
        self._caps = BodyCaps(settings.max_body_bytes, settings.max_names_body_bytes, settings.standalone)
        self.budget = Budget(settings.max_inflight_bytes)
        metrics.watch_budget(lambda: self.budget.held)
        self._throttle = Throttle()

    # ---- the verbs ---------------------------------------------------------------------------------------

    async def filter(self, body: bytes, *, best: bool = False) -> Reply:
        """`best`: pass only the best-scoring nodes that fit, at most `best_nodes` (/filter-best)."""
        args = self._parse_args(body)
        self._seen(args)
        problem = self._cache_problem(args)
        if problem:
            return Reply(encode_filter_result(args, (), {}, {}, error=problem), "error")
        # /filter-best lists no failed node when one passes: kube-scheduler only reads the failures when none does.
        answer = self.verdicts.filter_answer(args, brief=best)
        passed = answer.passed
        metrics = self.metrics
        metrics.rejected("unresolvable", answer.unresolvable)
        metrics.rejected("unknown_node", answer.unknown)
        metrics.rejected("not_serving", answer.not_serving)
        metrics.rejected("no_block", answer.failed - answer.unknown - answer.not_serving)
        pod = args.pod
        if not pod.request.empty:
            metrics.pod_schedulable(pod.key, {n.resource.short for n in pod.request.needs}, bool(passed))
        if not passed and pod.request.needs:
            log.info(
                "filter.no_node", pod=pod.key, candidates=len(args.names), failed=answer.failed,
                unresolvable=answer.unresolvable, rule=answer.example,
            )  # fmt: skip
        if best and passed:
            chosen = self.verdicts.best_of(args, passed, self.settings.best_nodes)
            return Reply(encode_filter_reply(args, chosen, b"", b""))
        return Reply(encode_filter_reply(args, passed, answer.failed_members, answer.unresolvable_members))

    async def prioritize(self, body: bytes) -> Reply:
        args = self._parse_args(body)
        self._seen(args)
        problem = self._cache_problem(args)
        if problem:
            # HostPriorityList has no error field: an HTTP error is the only way to say it.
            raise HttpError(400 if self.settings.standalone else 503, problem)
        return Reply(self.verdicts.priority_reply(args))

    async def bind(self, body: bytes, deadline: float, headers: Mapping[str, str] | None = None) -> Reply:
        """`deadline`: loop time by which the scheduler stops waiting; `headers`: the request's (a forwarding
        replica's headers say what time is left, and that it forwarded)."""
        headers = headers or {}
        try:
            args = parse_binding_args(_decode(body))
        except WireError as err:
            raise HttpError(400, str(err)) from None
        if self.binder is None:
            return Reply(encode_binding_result(_STANDALONE), "error")
        left = headers.get(DEADLINE_HEADER, "")
        if left.isascii() and left.isdigit() and len(left) <= 6:  # a forwarding replica says what time is left
            deadline = min(deadline, asyncio.get_running_loop().time() + int(left) / 1000)
        # A task of its own, shielded: a handler timeout must not cancel a bind holding a node's lock.
        outcome = await asyncio.shield(self.binder.start(args, deadline, forwarded=FORWARDED_HEADER in headers))
        if outcome.ok:
            return Reply(encode_binding_result(outcome.error))
        if outcome.reason in REJECT_REASONS:
            self.metrics.rejected(outcome.reason)
        return Reply(encode_binding_result(outcome.error), "error")

    def _parse_args(self, body: bytes) -> ExtenderArgs:
        try:
            return parse_extender_args(_decode(body))
        except WireError as err:
            raise HttpError(400, str(err)) from None

    def _cache_problem(self, args: ExtenderArgs) -> str:
        if args.node_names is None:
            return ""
        if self.settings.standalone:
            return _STANDALONE
        if not self.verdicts.store.synced:
            return "the node cache has not finished its first list from the API server yet; retry"
        return ""

    def _seen(self, args: ExtenderArgs) -> None:
        if self.binder is not None and not args.pod.request.empty:
            self.binder.seen.add(args.pod)  # the scheduler binds what it filtered: bind reads the pod from here

    # ---- HTTP --------------------------------------------------------------------------------------------

    async def _route(self, request: web.Request) -> web.Response:
        verb = _VERBS[request.path]
        if verb == "bind":
            reply = await self.bind(request["body"], request["deadline"], request.headers)
        elif verb == "filter":
            reply = await self.filter(request["body"], best=request.path == _FILTER_BEST)
        else:
            reply = await self.prioritize(request["body"])
        request["result"] = reply.result
        return _json_response(reply.body, reply.status)

    async def read_body(self, request: web.Request, verb: str) -> tuple[bytearray, Reservation]:
        """The whole body, within the verb's cap, the budget and the read timeout."""
        settings, budget = self.settings, self.budget
        if request.content_type != _JSON:
            raise HttpError(415, f"Content-Type must be {_JSON}, got {request.content_type or 'none'!r}", close=True)
        cap = self._caps.for_verb(verb)
        length = request.content_length
        if length is not None and length > cap:
            raise HttpError(413, f"body of {length} bytes is above the {verb} cap of {cap}",
                            reason="body_too_large", close=True)  # fmt: skip
        reservation = budget.reserve(length or 0)
        if reservation is None:
            raise HttpError(503, _busy(length or 0, budget), reason="memory", close=True)
        try:
            body = bytearray()
            try:
                async with asyncio.timeout(settings.read_timeout):
                    while chunk := await request.content.readany():
                        size = len(body) + len(chunk)
                        if size > cap:
                            raise HttpError(413, f"body is above the {verb} cap of {cap} bytes",
                                            reason="body_too_large", close=True)  # fmt: skip
                        if not reservation.grow(size):
                            raise HttpError(503, _busy(size, budget), reason="memory", close=True)
                        body += chunk
            except TimeoutError:
                raise HttpError(408, f"body not received within {settings.read_timeout} s",
                                reason="body_timeout", close=True) from None  # fmt: skip
            except _UNREADABLE_BODY as err:
                raise HttpError(400, f"body not readable: {err!r}"[:300], close=True) from None
            estimate = decoded_estimate(body)
            if estimate > budget.capacity:
                raise HttpError(
                    413, f"a body of {len(body)} bytes decodes to about {estimate // _MiB} MiB, above the "
                    f"{budget.capacity // _MiB} MiB all requests may hold together (--max-inflight-bytes)",
                    reason="body_too_large",
                )  # fmt: skip
            if not reservation.grow(estimate):
                raise HttpError(503, _busy(estimate, budget), reason="memory")
        except BaseException:
            reservation.release()
            raise
        return body, reservation

    @web.middleware
    async def guard(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        settings, metrics, throttle = self.settings, self.metrics, self._throttle
        verb = _VERBS.get(request.path)
        started = time.perf_counter()
        # A bind must be decided before the scheduler gives up on it, counted from when its head arrived.
        request["deadline"] = asyncio.get_running_loop().time() + settings.handler_timeout
        result = "ok"
        reservation: Reservation | None = None
        try:
            # Filter and prioritize read the memo: the warmer yields to them. Not to binds, which wait on the API
            # server far longer than they use the loop.
            with self.verdicts.serving() if verb in _READS_MEMO else contextlib.nullcontext():
                if verb is not None and request.method == "POST":
                    request["body"], reservation = await self.read_body(request, verb)
                async with asyncio.timeout(settings.handler_timeout):
                    response = await handler(request)
            result = request.get("result", "ok")
            return response
        except HttpError as err:
            result = "bad_request" if err.status < 500 else "error"
            if err.reason:
                metrics.http_rejected(err.reason)
            suppressed = throttle.admit(("request.rejected", request.path, err.status))
            if suppressed is not None:
                log.warning("request.rejected", path=request.path, status=err.status, error=err.message,
                            suppressed=suppressed)  # fmt: skip
            response = _json_response(encode_error(err.message), err.status)
            if err.status == 503:
                response.headers["Retry-After"] = "1"
            if err.close:
                response.force_close()
            return response
        except web.HTTPException as err:  # aiohttp's own: 404, 405...
            result = "bad_request" if err.status < 500 else "error"
            return _json_response(encode_error(f"{err.status} {err.reason}: {request.method} {request.path}"),
                                  err.status)  # fmt: skip
        except TimeoutError:
            result = "error"
            suppressed = throttle.admit(("request.timeout", request.path))
            if suppressed is not None:
                log.error("request.timeout", path=request.path, timeout_seconds=settings.handler_timeout,
                          suppressed=suppressed)  # fmt: skip
            return _json_response(encode_error(f"no answer within {settings.handler_timeout} s"), 503)
        except Exception:
            result = "error"
            log.exception("request.failed", path=request.path)
            return _json_response(encode_error("internal error; see the extender's log"), 500)
        finally:
            if reservation is not None:
                reservation.release()
            if verb is not None:
                metrics.observe(verb, result, time.perf_counter() - started)

    async def warmer(self, _: web.Application) -> AsyncIterator[None]:
        task = None if self.settings.standalone else asyncio.create_task(self.verdicts.warm_forever())
        yield
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def build_app(
    settings: ServerSettings, verdicts: Verdicts, binder: Binder | None, metrics: ExtenderMetrics
) -> web.Application:
    handlers = Handlers(settings, verdicts, binder, metrics)
    app = web.Application(middlewares=[handlers.guard], client_max_size=settings.max_body_bytes)
    app.cleanup_ctx.append(handlers.warmer)
    for path in _VERBS:
        app.router.add_post(path, handlers._route)
    _add_health_routes(app, settings, verdicts.store)
    if settings.serve_metrics:
        _add_metrics_route(app, metrics)
    return app


def _decode(body: bytes) -> Any:
    try:
        return decode_json(body)
    except WireError as err:
        raise HttpError(400, str(err)) from None


def _busy(size: int, budget: Budget) -> str:
    return (
        f"busy: this request would hold about {size // _MiB + 1} MiB and requests in flight already hold "
        f"{budget.held // _MiB} of {budget.capacity // _MiB} MiB; retry"
    )


def _add_health_routes(app: web.Application, settings: ServerSettings, store: ClusterStore) -> None:
    async def healthz(_: web.Request) -> web.Response:
        return _json_response(b'{"status":"ok"}')

    async def readyz(_: web.Request) -> web.Response:
        if settings.standalone or store.synced:
            return _json_response(b'{"status":"ready"}')
        return _json_response(encode_error("node and pod caches have not finished their first list"), 503)

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)


def _add_metrics_route(app: web.Application, metrics: ExtenderMetrics) -> None:
    async def metrics_handler(_: web.Request) -> web.Response:
        response = web.Response(body=metrics.exposition())
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    app.router.add_get("/metrics", metrics_handler)


def build_metrics_app(metrics: ExtenderMetrics, settings: ServerSettings, store: ClusterStore) -> web.Application:
    """/metrics, /healthz and /readyz, for --metrics-port: probes pointed here are never queued behind the
    scheduler's traffic."""
    app = web.Application()
    _add_metrics_route(app, metrics)
    _add_health_routes(app, settings, store)
    return app
