"""A loopback HTTP stand-in for the API server's node endpoints (GET and PATCH /api/v1/nodes/<name>, PATCH
/api/v1/nodes/<name>/status), shipped with the tests. It records every request, merges PATCH bodies into the
node's annotations, as a JSON merge patch would, and status PATCH bodies' conditions by type, as a strategic
merge patch of status.conditions would."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


class FakeApiServer:
    def __init__(self, labels: dict[str, str] | None = None) -> None:
        self.requests: list[dict[str, Any]] = []
        self.labels = labels or {}
        self.annotations: dict[str, str] = {}
        self.conditions: list[dict[str, Any]] = [{"type": "Ready", "status": "True", "reason": "KubeletReady"}]
        self.status_status = 200  # set to fail only status-subresource writes
        self.status = 200  # set to 5xx/4xx to make every request fail
        self.delay = 0.0  # seconds to hold every request before answering (a hanging API server)
        self.on_patch: Callable[[dict[str, Any]], None] | None = None  # sees each PATCH body as it arrives
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                annotation_patch = self.command == "PATCH" and body and not self.path.endswith("/status")
                if outer.on_patch is not None and annotation_patch:
                    outer.on_patch(body)
                if outer.delay:
                    time.sleep(outer.delay)
                with outer.lock:
                    outer.requests.append(
                        {"method": self.command, "path": self.path, "headers": dict(self.headers), "body": body}
                    )
                    status = outer.status
                    on_status = self.path.endswith("/status")
                    if on_status and status == 200:
                        status = outer.status_status
                    if status == 200 and self.command == "PATCH" and body and on_status:
                        for condition in body["status"]["conditions"]:
                            kept = [c for c in outer.conditions if c["type"] != condition["type"]]
                            outer.conditions = [*kept, condition]
                    elif status == 200 and self.command == "PATCH" and body:
                        for key, value in body["metadata"]["annotations"].items():
                            if value is None:
                                outer.annotations.pop(key, None)
                            else:
                                outer.annotations[key] = value
                    reply = {
                        "metadata": {"labels": outer.labels, "annotations": outer.annotations},
                        "status": {"conditions": outer.conditions},
                    }
                payload = json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_PATCH = _handle

            def log_message(self, format: str, *args: object) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)  # port 0: the kernel picks a free one
        self.port: int = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def patches(self) -> list[dict[str, Any]]:
        """Annotation patches (of the node itself)."""
        with self.lock:
            return [r for r in self.requests if r["method"] == "PATCH" and not r["path"].endswith("/status")]

    def status_patches(self) -> list[dict[str, Any]]:
        with self.lock:
            return [r for r in self.requests if r["method"] == "PATCH" and r["path"].endswith("/status")]

    def condition(self, condition_type: str) -> dict[str, Any] | None:
        with self.lock:
            return next((dict(c) for c in self.conditions if c["type"] == condition_type), None)

    def annotation(self, key: str) -> str | None:
        with self.lock:
            return self.annotations.get(key)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def kubeconfig(self, directory: Path, user: dict[str, Any] | None = None) -> Path:
        return write_kubeconfig(directory, f"http://127.0.0.1:{self.port}", user or {"token": "t0k"})


def write_kubeconfig(directory: Path, server: str, user: dict[str, Any]) -> Path:
    """`directory`/kubeconfig: one context, cluster `server`, credentials `user` (e.g. {"token": ...}).

    Written as JSON, which is YAML: both the kubernetes client and the plugin's own loader read it."""
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "test",
        "contexts": [{"name": "test", "context": {"cluster": "c", "user": "u"}}],
        "clusters": [{"name": "c", "cluster": {"server": server}}],
        "users": [{"name": "u", "user": user}],
    }
    path = directory / "kubeconfig"
    path.write_text(json.dumps(doc))  # JSON is YAML
    return path
