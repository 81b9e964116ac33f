"""A tiny in-process stand-in for kube-apiserver, over real HTTP, for extender tests before the cluster tier.

It STANDS IN FOR kube-apiserver: it serves only what the extender's client uses (list and watch of nodes and
pods with resourceVersions, bookmarks-free watches that end at timeoutSeconds, 410 Gone for a too-old
resourceVersion, field selectors on spec.nodeName and status.phase, GET of one node or pod, the pods/binding
subresource with kube-apiserver's rules: 409 Conflict if the pod is already bound or its UID differs, and a
request deadline from the `timeout` query parameter: a write still stalled at it is answered 504 and not made;
and coordination.k8s.io/v1 Leases: GET, POST (409 if it exists), PUT with the resourceVersion as the
precondition (409 Conflict if it changed)). Every request is logged in `requests` (method, path, query), for
tests that count API calls. The real API server is exercised by the cluster tier (tests/cluster).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from tests.plugin.api_stub import write_kubeconfig

from .serving import served


class FakeApiServer:
    def __init__(self) -> None:
        self.rv = 100
        self.objects: dict[str, dict[str, dict[str, Any]]] = {"nodes": {}, "pods": {}}
        self.events: list[tuple[int, str, str, dict[str, Any]]] = []  # (rv, kind, type, object)
        self.oldest_event_rv = 0  # watches from before this get 410 Gone (set by `compact`)
        self.bindings: list[tuple[str, str]] = []  # (pod key, node), in the order they were accepted
        self.bind_delay = 0.0  # seconds each Binding POST stalls before it is decided
        self.bind_ignores_deadline = False  # decide a stalled binding even past its `timeout` (an etcd commit)
        self.leases: dict[str, dict[str, Any]] = {}  # "namespace/name" -> Lease
        self.lease_writes_fail = False  # answer every Lease write 500 (an API server that cannot be written)
        self.requests: list[tuple[str, str, str]] = []  # (method, path, query string), in arrival order
        self._changed: asyncio.Condition | None = None
        self._wakers: set[asyncio.Future[None]] = set()
        self.loop: asyncio.AbstractEventLoop | None = None

    # ---- test-side mutation (thread-safe: runs on the server's loop) -----------------------------------

    def _call(self, fn: Any, *args: Any) -> Any:
        assert self.loop is not None

        async def run() -> Any:
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)

    def put(self, kind: str, obj: dict[str, Any]) -> None:
        self._call(self._put, kind, copy.deepcopy(obj))

    def put_raw(self, kind: str, key: str, obj: Any, event_type: str = "ADDED") -> None:
        """Serve `obj` as it is, however malformed (a list item and a watch event), under `key`."""
        self._call(self._record, kind, event_type, key, copy.deepcopy(obj))

    def delete(self, kind: str, key: str) -> None:
        self._call(self._delete, kind, key)

    def compact(self) -> None:
        """Forget the event history, as etcd compaction does: older watches get 410 Gone."""
        self._call(self._compact)

    # ---- state ----------------------------------------------------------------------------------------

    @staticmethod
    def key(kind: str, obj: dict[str, Any]) -> str:
        meta = obj["metadata"]
        return meta["name"] if kind == "nodes" else f"{meta.get('namespace', 'default')}/{meta['name']}"

    def _put(self, kind: str, obj: dict[str, Any]) -> None:
        key = self.key(kind, obj)
        kind_type = "MODIFIED" if key in self.objects[kind] else "ADDED"
        self._record(kind, kind_type, key, obj)

    def _delete(self, kind: str, key: str) -> None:
        obj = self.objects[kind].pop(key, None)
        if obj is not None:
            self._event(kind, "DELETED", obj)

    def _record(self, kind: str, kind_type: str, key: str, obj: dict[str, Any]) -> None:
        self.objects[kind][key] = obj
        self._event(kind, kind_type, obj)

    def _event(self, kind: str, event_type: str, obj: dict[str, Any]) -> None:
        """Bump the resource version, stamp it on `obj`, log a copy as a watch event and wake the watchers."""
        self.rv += 1
        meta = obj.get("metadata") if isinstance(obj, dict) else None
        if isinstance(meta, dict):  # a malformed object (see put_raw) is served without one
            meta["resourceVersion"] = str(self.rv)
        self.events.append((self.rv, kind, event_type, copy.deepcopy(obj)))
        self._notify()

    def _compact(self) -> None:
        self.events.clear()
        self.oldest_event_rv = self.rv

    def _notify(self) -> None:
        if self._changed is not None:
            changed = self._changed

            async def wake() -> None:
                async with changed:
                    changed.notify_all()

            self._wakers.add(task := asyncio.ensure_future(wake()))
            task.add_done_callback(self._wakers.discard)

    # ---- HTTP -----------------------------------------------------------------------------------------

    def app(self) -> web.Application:
        self.loop = asyncio.get_event_loop()
        self._changed = asyncio.Condition()

        @web.middleware
        async def record(request: web.Request, handler: Any) -> web.StreamResponse:
            self.requests.append((request.method, request.path, request.query_string))
            return await handler(request)

        app = web.Application(middlewares=[record])

        async def nodes(request: web.Request) -> web.StreamResponse:
            return await self._list_or_watch(request, "nodes")

        async def pods(request: web.Request) -> web.StreamResponse:
            return await self._list_or_watch(request, "pods")

        app.router.add_get("/api/v1/nodes", nodes)
        app.router.add_get("/api/v1/pods", pods)
        app.router.add_get("/api/v1/nodes/{name}", self._get_node)
        app.router.add_get("/api/v1/namespaces/{ns}/pods/{name}", self._get_pod)
        app.router.add_post("/api/v1/namespaces/{ns}/pods/{name}/binding", self._bind)
        leases = "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases"
        app.router.add_get(leases + "/{name}", self._get_lease)
        app.router.add_post(leases, self._create_lease)
        app.router.add_put(leases + "/{name}", self._replace_lease)
        return app

    # ---- leases ---------------------------------------------------------------------------------------

    async def _get_lease(self, request: web.Request) -> web.Response:
        key = f"{request.match_info['ns']}/{request.match_info['name']}"
        return self._object_or_404(self.leases.get(key), "leases", key)

    async def _create_lease(self, request: web.Request) -> web.Response:
        lease = await request.json()
        key = f"{request.match_info['ns']}/{lease['metadata']['name']}"
        if key in self.leases:
            return self._status(409, "AlreadyExists", f'leases.coordination.k8s.io "{key}" already exists')
        return self._store_lease(key, lease, 201)

    async def _replace_lease(self, request: web.Request) -> web.Response:
        lease = await request.json()
        key = f"{request.match_info['ns']}/{request.match_info['name']}"
        current = self.leases.get(key)
        if current is None:
            return self._status(404, "NotFound", f"leases {key!r} not found")
        if lease["metadata"].get("resourceVersion") != current["metadata"]["resourceVersion"]:
            return self._status(409, "Conflict", "the object has been modified; please apply your changes again")
        return self._store_lease(key, lease, 200)

    def _store_lease(self, key: str, lease: dict[str, Any], status: int) -> web.Response:
        if self.lease_writes_fail:
            return self._status(500, "InternalError", "etcdserver: request timed out")
        self.rv += 1
        lease["metadata"]["resourceVersion"] = str(self.rv)
        lease["metadata"]["namespace"] = key.split("/", 1)[0]
        self.leases[key] = lease
        return web.json_response(lease, status=status, dumps=lambda d: orjson.dumps(d).decode())

    def lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.leases.get(f"{namespace}/{name}"))

    @staticmethod
    def _selected(obj: Any, selector: str) -> bool:
        if not isinstance(obj, dict) or not all(isinstance(obj.get(k) or {}, dict) for k in ("spec", "status")):
            return True  # a malformed object (see put_raw) reaches every list and watch
        for term in filter(None, selector.split(",")):
            negate = "!=" in term
            field, value = term.split("!=" if negate else "=", 1)
            value = value.lstrip("=")
            if field == "spec.nodeName":
                actual = (obj.get("spec") or {}).get("nodeName") or ""
            elif field == "spec.schedulerName":
                actual = (obj.get("spec") or {}).get("schedulerName") or "default-scheduler"
            elif field == "status.phase":
                actual = (obj.get("status") or {}).get("phase") or ""
            else:
                raise web.HTTPBadRequest(text=f"field selector {field} not supported by the fake")
            if (actual == value) == negate:
                return False
        return True

    async def _list_or_watch(self, request: web.Request, kind: str) -> web.StreamResponse:
        selector = request.query.get("fieldSelector", "")
        if request.query.get("watch") in ("true", "1", "True"):
            return await self._watch(request, kind, selector)
        items = [o for o in self.objects[kind].values() if self._selected(o, selector)]
        return web.json_response(
            {"kind": "List", "apiVersion": "v1", "metadata": {"resourceVersion": str(self.rv)}, "items": items},
            dumps=lambda d: orjson.dumps(d).decode(),
        )

    async def _watch(self, request: web.Request, kind: str, selector: str) -> web.StreamResponse:
        since = int(request.query.get("resourceVersion") or self.rv)
        timeout = float(request.query.get("timeoutSeconds") or 30)
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        if since < self.oldest_event_rv:
            gone = {
                "type": "ERROR",
                "object": {
                    "kind": "Status",
                    "code": 410,
                    "reason": "Expired",
                    "message": f"too old resource version: {since}",
                },
            }
            await response.write(orjson.dumps(gone) + b"\n")
            return response
        assert self._changed is not None
        deadline = asyncio.get_running_loop().time() + timeout
        try:
            while True:
                for rv, event_kind, event_type, obj in list(self.events):
                    if rv > since and event_kind == kind:
                        since = rv
                        if self._selected(obj, selector) or event_type == "DELETED":
                            await response.write(orjson.dumps({"type": event_type, "object": obj}) + b"\n")
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    break
                async with self._changed:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._changed.wait(), remaining)
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        return response

    async def _get_node(self, request: web.Request) -> web.Response:
        obj = self.objects["nodes"].get(request.match_info["name"])
        return self._object_or_404(obj, "nodes", request.match_info["name"])

    async def _get_pod(self, request: web.Request) -> web.Response:
        key = f"{request.match_info['ns']}/{request.match_info['name']}"
        return self._object_or_404(self.objects["pods"].get(key), "pods", key)

    @staticmethod
    def _status(code: int, reason: str, message: str) -> web.Response:
        return web.json_response(
            {
                "kind": "Status",
                "apiVersion": "v1",
                "status": "Failure",
                "code": code,
                "reason": reason,
                "message": message,
            },
            status=code,
        )

    def _object_or_404(self, obj: dict[str, Any] | None, kind: str, key: str) -> web.Response:
        if obj is None:
            return self._status(404, "NotFound", f"{kind} {key!r} not found")
        return web.json_response(obj, dumps=lambda d: orjson.dumps(d).decode())

    async def _bind(self, request: web.Request) -> web.Response:
        body = await request.json()
        key = f"{request.match_info['ns']}/{request.match_info['name']}"
        if self.bind_delay:
            deadline = _duration(request.query.get("timeout", ""))
            if deadline is not None and self.bind_delay > deadline and not self.bind_ignores_deadline:
                await asyncio.sleep(deadline)  # kube-apiserver's request deadline: the write is never attempted
                return self._status(504, "Timeout", "request did not complete within the allowed duration")
            await asyncio.sleep(self.bind_delay)
        pod = self.objects["pods"].get(key)
        if pod is None:
            return self._status(404, "NotFound", f"pods {key!r} not found")
        uid = (body.get("metadata") or {}).get("uid")
        if uid and uid != pod["metadata"].get("uid"):
            return self._status(409, "Conflict", f"Precondition failed: UID in precondition: {uid}")
        if (pod.get("spec") or {}).get("nodeName"):
            name, node = request.match_info["name"], pod["spec"]["nodeName"]
            message = f'Operation cannot be fulfilled on pods/binding "{name}": '
            message += f'pod {name} is already assigned to node "{node}"'
            return self._status(409, "Conflict", message)
        target = body["target"]["name"]
        bound = copy.deepcopy(pod)
        bound["spec"]["nodeName"] = target
        self._record("pods", "MODIFIED", key, bound)
        self.bindings.append((key, target))
        return web.json_response({"kind": "Status", "apiVersion": "v1", "status": "Success", "code": 201}, status=201)


def _duration(text: str) -> float | None:
    """A Go duration as kube-apiserver's `timeout` parameter takes it ("500ms", "3s"); None if absent."""
    for suffix, scale in (("ms", 0.001), ("s", 1.0)):
        if text.endswith(suffix) and text[: -len(suffix)].replace(".", "", 1).isdigit():
            return float(text[: -len(suffix)]) * scale
    return None


@contextmanager
def fake_apiserver(tmp: Path) -> Iterator[tuple[FakeApiServer, Path]]:
    """Serve a FakeApiServer on loopback; yield it and a kubeconfig file that points at it."""
    fake = FakeApiServer()
    with served(fake.app) as (base, _):
        yield fake, write_kubeconfig(tmp, base, {"token": "not-a-secret"})
