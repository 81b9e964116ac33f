"""The extender's only door to the API server: list, watch, get, bind. Blocking calls, run in threads, except
the Binding POST, which runs on the event loop (`bind_async`).

Objects are kept as the API server's own JSON (dicts parsed with orjson), not as the client's generated
models: `extender.wire` reads the same JSON whether it comes from a scheduler request or from a watch, and
skipping model deserialisation keeps a 5,000-node list cheap.

The Binding POST is the one call made per scheduled pod, while the scheduler waits: through the generated client
in a thread it cost about a millisecond of Python per pod, and a thread holding the interpreter lock delays the
event loop that answers the scheduler's filter and prioritize. `bind_async` sends the same request with aiohttp
on the loop, with the client's own configuration (server, CA, client certificate, bearer token: the token is
read through the client's auth settings on every call, so a rotated service-account token is used at once).
A configuration aiohttp is not given here (a proxy) keeps the threaded call.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote as url_quote

import aiohttp
import orjson
from kubernetes import client, config
from kubernetes.client.rest import ApiException

from extender.ratelog import Throttle
from neuronalloc.text import quote, shorten
from neuronlog import get_logger

__all__ = ["ApiException", "KubeApi", "Reflector", "WatchEvent"]

log = get_logger(__name__)

Kind = Literal["nodes", "pods", "pending"]
KINDS: tuple[Kind, ...] = ("nodes", "pods")  # what the store is built from; "pending" feeds the metrics only
# Pods that hold devices are bound and not finished; the server-side selector keeps the watch small.
_UNFINISHED = "status.phase!=Succeeded,status.phase!=Failed"
_ACTIVE_BOUND_PODS = f"spec.nodeName!=,{_UNFINISHED}"


@dataclass(frozen=True, slots=True)
class WatchEvent:
    kind: Kind
    type: str  # SYNC (a full list) | ADDED | MODIFIED | DELETED | CONTACT (bookmark or a fresh watch)
    objects: tuple[Any, ...]


class KubeApi:
    def __init__(
        self, kubeconfig: str = "", *, request_timeout: float = 10.0, scheduler_name: str = "neuron-contig-scheduler"
    ) -> None:
        configuration = client.Configuration()
        if kubeconfig:
            config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
        else:
            config.load_incluster_config(client_configuration=configuration)
        # Binds run in parallel threads (one per node being bound); the default pool of 5 x cores would
        # discard connections under a burst.
        configuration.connection_pool_maxsize = 32
        # Unbound pods of our scheduler: how the extender learns that a pod it counted as unschedulable was
        # deleted (the bound-pod watch never sees such a pod).
        self._pending_selector = f"spec.nodeName=,spec.schedulerName={scheduler_name},status.phase=Pending"
        api_client = client.ApiClient(configuration)
        self._api = client.CoreV1Api(api_client)
        self._leases = client.CoordinationV1Api(api_client)
        self._client = api_client
        # (connect, read): the client ignores a bare float.
        self._timeout = (request_timeout, request_timeout)
        self._seconds = request_timeout
        self._configuration = configuration
        self._session: aiohttp.ClientSession | None = None

    @property
    def binds_on_loop(self) -> bool:
        """Whether `bind_async` can send the Binding (else the caller runs `bind` in a thread)."""
        return not self._configuration.proxy

    def _json(self, response: Any) -> Any:
        try:
            return orjson.loads(response.data)
        finally:
            response.release_conn()

    def list_objects(self, kind: Kind) -> tuple[list[Any], str]:
        """Every object and the list's resourceVersion, from a consistent (quorum) read."""
        doc = self._json(self._list(kind, _preload_content=False, _request_timeout=self._timeout))
        return list(doc.get("items") or ()), str((doc.get("metadata") or {}).get("resourceVersion", ""))

    def open_watch(self, kind: Kind, resource_version: str, timeout_seconds: int) -> Any:
        """A streaming watch response; iterate it with `watch_lines`, close it to stop."""
        common: dict[str, Any] = {
            "watch": True,
            "resource_version": resource_version,
            "allow_watch_bookmarks": True,
            "timeout_seconds": timeout_seconds,
            "_preload_content": False,
            # Connect timeout, then no read timeout: the server ends the watch after timeout_seconds.
            "_request_timeout": (self._seconds, timeout_seconds + self._seconds),
        }
        return self._list(kind, **common)

    def _list(self, kind: Kind, **options: Any) -> Any:
        """One list call (a watch, with watch=True) for `kind`; pods only those that can hold devices."""
        if kind == "nodes":
            return self._api.list_node(**options)
        selector = self._pending_selector if kind == "pending" else _ACTIVE_BOUND_PODS
        return self._api.list_pod_for_all_namespaces(field_selector=selector, **options)

    def get_pod(self, namespace: str, name: str, *, timeout: float | None = None) -> Any:
        return self._json(
            self._api.read_namespaced_pod(
                name, namespace, _preload_content=False, _request_timeout=self._seconds_pair(timeout)
            )
        )

    def _seconds_pair(self, timeout: float | None) -> tuple[float, float]:
        seconds = self._seconds if timeout is None else max(0.05, timeout)
        return (seconds, seconds)

    def bind(self, namespace: str, name: str, uid: str, node: str, *, timeout: float | None = None) -> None:
        """POST pods/{name}/binding, as kube-scheduler's default binder does (with the UID as a precondition).

        `timeout` bounds the call on both ends: the client gives up after it, and the API server is told it
        too (the `timeout` query parameter sets the request's deadline there), so a binding the client gave up
        on is not written later by a server still working on it (bar one already being committed)."""
        seconds = self._seconds if timeout is None else max(0.05, timeout)
        body = orjson.loads(_binding(namespace, name, uid, node))
        response = self._client.call_api(
            "/api/v1/namespaces/{namespace}/pods/{name}/binding",
            "POST",
            {"namespace": namespace, "name": name},
            [("timeout", f"{max(1, int(seconds * 1000))}ms")],
            {"Accept": "application/json", "Content-Type": "application/json"},
            body=body,
            auth_settings=["BearerToken"],
            _return_http_data_only=True,
            _preload_content=False,
            _request_timeout=(seconds, seconds),
        )
        # Read the body before the connection goes back to the pool: an unread reply poisons the next request.
        _ = response.data
        response.release_conn()

    async def bind_async(self, namespace: str, name: str, uid: str, node: str, *, timeout: float) -> None:
        """`bind`, on the event loop: the same request, the same deadline on both ends. Raises ApiException for an
        answer that is not 2xx (with the body, for the Status message), anything else when the outcome is unknown
        (a timeout, a broken connection)."""
        seconds = max(0.05, timeout)
        headers = {"Accept": "application/json", "Content-Type": "application/json"}
        self._client.update_params_for_auth(headers, [], ["BearerToken"])
        url = (
            f"{self._configuration.host.rstrip('/')}/api/v1/namespaces/{url_quote(namespace, safe='')}/pods/"
            f"{url_quote(name, safe='')}/binding?timeout={max(1, int(seconds * 1000))}ms"
        )
        async with asyncio.timeout(seconds):
            # kubeconfig's tls-server-name: the name the certificate is checked against when the URL has another.
            server_name = getattr(self._configuration, "tls_server_name", None) or None
            async with self._http().post(url, data=_binding(namespace, name, uid, node), headers=headers,
                                         allow_redirects=False, server_hostname=server_name) as response:  # fmt: skip
                body = await response.content.read(_MAX_REPLY)
                if not 200 <= response.status < 300:
                    err = ApiException(status=response.status, reason=response.reason)
                    err.body = body
                    raise err

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            cfg = self._configuration
            context: ssl.SSLContext | bool = False
            if cfg.host.startswith("https"):
                if cfg.verify_ssl:
                    context = ssl.create_default_context(cafile=cfg.ssl_ca_cert or None)
                    # The generated client checks the host name unless assert_hostname is False (kubeconfig's
                    # insecure-skip-tls-verify turns verify_ssl off altogether).
                    context.check_hostname = cfg.assert_hostname is not False
                else:
                    context = ssl.create_default_context()
                    context.check_hostname = False
                    context.verify_mode = ssl.CERT_NONE
                if cfg.cert_file:
                    context.load_cert_chain(cfg.cert_file, cfg.key_file or None)
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=32, ssl=context), trust_env=False,
                cookie_jar=aiohttp.DummyCookieJar(),
            )  # fmt: skip
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # ---- the binder Lease (coordination.k8s.io/v1) ---------------------------------------------------------

    def get_lease(self, namespace: str, name: str, *, timeout: float) -> Any:
        """The Lease as JSON, or None if it does not exist."""
        try:
            return self._json(
                self._leases.read_namespaced_lease(
                    name, namespace, _preload_content=False, _request_timeout=self._seconds_pair(timeout)
                )
            )
        except ApiException as err:
            if err.status == 404:
                return None
            raise

    def create_lease(self, namespace: str, lease: Any, *, timeout: float) -> Any:
        return self._json(
            self._leases.create_namespaced_lease(
                namespace, lease, _preload_content=False, _request_timeout=self._seconds_pair(timeout)
            )
        )

    def replace_lease(self, namespace: str, name: str, lease: Any, *, timeout: float) -> Any:
        """PUT with lease.metadata.resourceVersion as the precondition: 409 Conflict if it changed."""
        return self._json(
            self._leases.replace_namespaced_lease(
                name, namespace, lease, _preload_content=False, _request_timeout=self._seconds_pair(timeout)
            )
        )


def _binding(namespace: str, name: str, uid: str, node: str) -> bytes:
    """The Binding, with the pod's UID as a precondition (as kube-scheduler's default binder sends it)."""
    return orjson.dumps({
        "apiVersion": "v1",
        "kind": "Binding",
        "metadata": {"name": name, "namespace": namespace, **({"uid": uid} if uid else {})},
        "target": {"apiVersion": "v1", "kind": "Node", "name": node},
    })  # fmt: skip


_MAX_REPLY = 1024 * 1024  # a Status, or the Binding echoed: a few hundred bytes


# One watch event is one object; etcd refuses objects above 1.5 MiB, so a longer line is not an event.
MAX_EVENT_BYTES = 16 * 1024 * 1024
_UNREADABLE = object()  # a line that is not JSON: skipped, the watch goes on


def watch_lines(response: Any, *, limit: int = MAX_EVENT_BYTES) -> Iterator[Any]:
    """The events of a watch response, one JSON object per line (`_UNREADABLE` for a line that is not JSON).
    A line longer than `limit` ends the watch with an error: the reflector lists again."""
    pending = bytearray()
    for chunk in response.stream(amt=None, decode_content=False):
        start = len(pending)
        pending += chunk
        if b"\n" not in pending[start:]:
            if len(pending) > limit:
                raise RuntimeError(f"watch line above {limit} bytes")
            continue
        *lines, rest = pending.split(b"\n")
        pending = bytearray(rest)
        for line in lines:
            if line.strip():
                yield _loads(line, limit)
    if pending.strip():
        yield _loads(pending, limit)


def _loads(line: bytes | bytearray, limit: int) -> Any:
    if len(line) > limit:
        raise RuntimeError(f"watch line above {limit} bytes")
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError:
        return _UNREADABLE


class Reflector(threading.Thread):
    """List, then watch from the list's resourceVersion; relist on 410 Gone or any failure, with backoff.

    Events go to `deliver` (which hands them to the event loop). `stop()` closes the open watch at once.
    """

    def __init__(
        self,
        api: KubeApi,
        kind: Kind,
        deliver: Callable[[WatchEvent], None],
        *,
        watch_timeout: int = 300,
        max_backoff: float = 30.0,
    ) -> None:
        super().__init__(name=f"reflector-{kind}", daemon=True)
        self._api = api
        self._kind = kind
        self.kind = kind
        self._deliver = deliver
        self._watch_timeout = watch_timeout
        self._max_backoff = max_backoff
        self._stopping = threading.Event()
        self._relisting = threading.Event()
        self._response: Any = None

    def relist(self) -> None:
        """List again now (a consistent read), then watch from there. Thread-safe; returns at once."""
        self._relisting.set()
        _interrupt(self._response)

    def stop(self) -> None:
        self._stopping.set()
        _interrupt(self._response)

    def run(self) -> None:
        backoff = 0.5
        while not self._stopping.is_set():
            try:
                self._relisting.clear()
                items, version = self._api.list_objects(self._kind)
                self._deliver(WatchEvent(self._kind, "SYNC", tuple(items)))
                log.info("cache.listed", kind=self._kind, objects=len(items), resource_version=version)
                backoff = 0.5
                while not self._stopping.is_set() and not self._relisting.is_set():
                    version = self._watch_once(version)
            except _Expired:
                log.info("cache.relist", kind=self._kind, rule="watch resourceVersion expired (410 Gone)")
            except Exception as err:
                if self._stopping.is_set():
                    return
                if self._relisting.is_set():
                    continue  # the watch was closed on purpose, to list again
                log.warning("cache.watch_failed", kind=self._kind, error=repr(err), retry_in_seconds=backoff)
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, self._max_backoff)

    def _watch_once(self, version: str) -> str:
        self._response = self._api.open_watch(self._kind, version, self._watch_timeout)
        self._deliver(WatchEvent(self._kind, "CONTACT", ()))
        try:
            if self._relisting.is_set():  # asked while the watch was opening: `relist` saw no response to close
                return version
            for event in watch_lines(self._response):
                kind, obj = _event_parts(event)
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        raise _Expired()
                    raise RuntimeError(
                        f"watch error {shorten(str(obj.get('code')))}: {shorten(str(obj.get('message')))}"
                    )
                if not obj:
                    # Not an event we can read: skip it and keep the watch (the cache logs bad objects it is
                    # handed; this one has no object to hand over).
                    _skipped(self._kind, event)
                    continue
                meta = obj.get("metadata")
                seen = meta.get("resourceVersion") if isinstance(meta, dict) else None
                if isinstance(seen, str) and seen:
                    version = seen
                if kind == "BOOKMARK":
                    self._deliver(WatchEvent(self._kind, "CONTACT", ()))
                elif kind in ("ADDED", "MODIFIED", "DELETED"):
                    self._deliver(WatchEvent(self._kind, kind, (obj,)))
        finally:
            # A watch connection may be cut mid-stream: never hand it back to the pool.
            self._response.close()
            self._response = None
        return version


def _interrupt(response: Any) -> None:
    """End the reflector thread's blocking read of `response` now, from any thread, without blocking.

    Not `response.close()`: that takes the buffered reader's lock, which the reading thread holds until the
    next watch event or the end of the watch (minutes), and would block the caller (the event loop) as long.
    Shutting the socket down is one system call: the blocked read returns at once, and the reflector thread
    closes the response itself."""
    if response is None:
        return
    sock = getattr(getattr(response, "connection", None), "sock", None)
    if sock is None:
        return
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def _event_parts(event: Any) -> tuple[str, dict[str, Any]]:
    """(type, object) of one watch event; an empty object when the event is not shaped like one."""
    if not isinstance(event, dict):
        return "", {}
    kind, obj = event.get("type"), event.get("object")
    return (kind if isinstance(kind, str) else ""), (obj if isinstance(obj, dict) else {})


_throttle = Throttle()


def _skipped(kind: Kind, event: Any) -> None:
    suppressed = _throttle.admit(("watch_event", kind))
    if suppressed is not None:
        log.warning(
            "cache.event_skipped", kind=kind, received=quote(event, 200), suppressed=suppressed,
            rule="a watch event that is not {type, object}: skipped, the watch goes on",
        )  # fmt: skip


class _Expired(Exception):
    """The watch's resourceVersion is too old: list again."""
