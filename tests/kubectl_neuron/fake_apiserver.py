"""A stand-in for the Kubernetes API server that serves recorded list responses over loopback HTTP.

This is a mock, and says so: it answers only the three read calls `kubectl neuron` makes (nodes, pods,
events), in the API server's own JSON shapes (`NodeList`, `PodList`, `EventList`), with its paging
(`limit` / `continue`), its `fieldSelector` semantics for the fields the client uses, equality
`labelSelector`s, and its `Status` error bodies. Anything else is a 404, an unsupported selector a 400, as the
real server would answer. Every request is recorded so tests can assert the client only reads.
The cluster tier (tests/cluster/) runs the real kube-apiserver.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.plugin.api_stub import write_kubeconfig

Obj = dict[str, Any]

_LISTS = {
    "/api/v1/nodes": ("NodeList", "nodes"),
    "/api/v1/pods": ("PodList", "pods"),
    "/api/v1/events": ("EventList", "events"),
}


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]


@dataclass
class FakeCluster:
    nodes: list[Obj] = field(default_factory=list)
    pods: list[Obj] = field(default_factory=list)
    events: list[Obj] = field(default_factory=list)
    # The server's own page cap, below the client's limit, so that paging is exercised.
    max_page: int = 1000
    # path -> (HTTP status, reason) to answer instead of the list
    failures: dict[str, tuple[int, str]] = field(default_factory=dict)
    requests: list[Recorded] = field(default_factory=list)


def _field(obj: Obj, dotted: str) -> str:
    value: Any = obj
    for part in dotted.split("."):
        value = value.get(part, {}) if isinstance(value, dict) else {}
    return value if isinstance(value, str) else ""


_SUPPORTED_FIELDS = {
    "pods": {"status.phase", "spec.nodeName", "metadata.namespace", "spec.schedulerName"},
    "events": {"reason", "involvedObject.kind", "involvedObject.uid", "type"},
    "nodes": {"metadata.name", "spec.unschedulable"},
}


def _selector_terms(text: str) -> list[tuple[str, str]]:
    terms = []
    for term in filter(None, text.split(",")):
        if "!=" in term or "=" not in term:
            raise ValueError(f"unsupported selector term {term!r}")
        key, value = term.split("=", 1)
        terms.append((key.rstrip("="), value))
    return terms


def _matches(obj: Obj, resource: str, field_selector: str, label_selector: str) -> bool:
    for key, value in _selector_terms(field_selector):
        if key not in _SUPPORTED_FIELDS[resource]:
            raise ValueError(f"field label not supported: {key}")
        if _field(obj, key) != value:
            return False
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return all(labels.get(key) == value for key, value in _selector_terms(label_selector))


class _Handler(BaseHTTPRequestHandler):
    cluster: FakeCluster

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        return

    def _send(self, status: int, doc: Mapping[str, Any]) -> None:
        body = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _status(self, code: int, reason: str, message: str) -> None:
        self._send(
            code,
            {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Failure",
                "message": message,
                "reason": reason,
                "code": code,
            },
        )

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        self.cluster.requests.append(Recorded("GET", url.path, query))
        if url.path in self.cluster.failures:
            code, reason = self.cluster.failures[url.path]
            self._status(code, reason, f"{url.path} is {reason.lower()} (fake API server)")
            return
        if url.path not in _LISTS:
            self._status(404, "NotFound", f"the server could not find the requested resource {url.path}")
            return
        kind, resource = _LISTS[url.path]
        items: Sequence[Obj] = getattr(self.cluster, resource)
        try:
            selected = [
                o
                for o in items
                if _matches(o, resource, query.get("fieldSelector", ""), query.get("labelSelector", ""))
            ]
        except ValueError as err:
            self._status(400, "BadRequest", str(err))
            return
        start = int(query.get("continue") or 0)
        limit = min(int(query.get("limit") or len(selected) or 1), self.cluster.max_page)
        page = selected[start : start + limit]
        more = start + limit < len(selected)
        self._send(
            200,
            {
                "kind": kind,
                "apiVersion": "v1",
                "metadata": {"resourceVersion": "4242", **({"continue": str(start + limit)} if more else {})},
                "items": page,
            },
        )

    def _refuse(self) -> None:
        self.cluster.requests.append(Recorded(self.command, urlsplit(self.path).path, {}))
        self._status(405, "MethodNotAllowed", "the fake API server only serves reads")

    do_POST = do_PUT = do_PATCH = do_DELETE = _refuse


@contextmanager
def serve(cluster: FakeCluster, kubeconfig_dir: Path) -> Iterator[Path]:
    """Serve `cluster` on 127.0.0.1 (ephemeral port); yields a kubeconfig file pointing at it."""
    handler = type("Handler", (_Handler,), {"cluster": cluster})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, name="fake-apiserver", daemon=True)
    thread.start()
    try:
        yield write_kubeconfig(kubeconfig_dir, f"http://127.0.0.1:{server.server_address[1]}", {"token": "fake-token"})
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
