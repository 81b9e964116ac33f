"""A minimal Kubernetes API client: read one node, merge-patch its annotations, patch one condition of its status.

Why not the `kubernetes` package: importing it costs ~50 MiB of resident memory, against a 50 MiB budget for
the whole idle daemon, and the plugin needs three HTTP calls. This speaks HTTPS with the stdlib, authenticated by
the in-cluster service account (token re-read per request: bound tokens rotate) or by a kubeconfig with a
token or client certificate. Blocking: callers run it in a worker thread.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import ssl
import tempfile
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from neuronalloc.text import shorten

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
REQUEST_TIMEOUT_SECONDS = 10.0
MAX_REPLY_BYTES = 4 * 1024 * 1024  # a Node is at most ~1.5 MiB (etcd's object limit); more is not an answer


class KubeApiError(RuntimeError):
    """A request failed. `unreachable`: no HTTP answer (retry); otherwise the API server refused it."""

    def __init__(self, message: str, *, unreachable: bool) -> None:
        super().__init__(message)
        self.unreachable = unreachable


class HttpStatusError(KubeApiError):
    """The API server answered with an error status: retry on 5xx and 429, else it refused the request."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message, unreachable=status >= 500 or status == 429)
        self.status = status


class KubeConfigError(ValueError):
    """The kubeconfig or in-cluster environment cannot be used; the message says what is missing."""


class NodeApi(Protocol):
    def node_labels(self, node: str) -> dict[str, str]: ...
    def patch_node_annotations(self, node: str, annotations: Mapping[str, str | None]) -> None: ...
    def node_condition(self, node: str, condition_type: str) -> dict[str, Any] | None: ...
    def patch_node_condition(self, node: str, condition: Mapping[str, str]) -> None: ...


@dataclass(frozen=True)
class _Endpoint:
    host: str
    port: int
    ssl_context: ssl.SSLContext | None  # None = plain HTTP (test API servers on loopback)
    token: str | None = None
    token_file: Path | None = None

    def bearer(self) -> str | None:
        if self.token_file is not None:
            return self.token_file.read_text().strip()
        return self.token


class HttpNodeApi:
    def __init__(self, endpoint: _Endpoint) -> None:
        self._endpoint = endpoint

    user_agent = "neuron-device-plugin"

    def _request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        content_type: str = "",
        *,
        limit: int = MAX_REPLY_BYTES,
    ) -> Any:
        """One call; the answer's JSON, read through `limit` bytes (a larger answer is refused, never parsed)."""
        ep = self._endpoint
        connection: http.client.HTTPConnection
        if ep.ssl_context is not None:
            connection = http.client.HTTPSConnection(
                ep.host, ep.port, timeout=REQUEST_TIMEOUT_SECONDS, context=ep.ssl_context
            )
        else:
            connection = http.client.HTTPConnection(ep.host, ep.port, timeout=REQUEST_TIMEOUT_SECONDS)
        headers = {"Accept": "application/json", "User-Agent": self.user_agent}
        if content_type:
            headers["Content-Type"] = content_type
        try:
            token = ep.bearer()
            if token:
                headers["Authorization"] = f"Bearer {token}"
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            payload = response.read(limit + 1)
        except (OSError, http.client.HTTPException) as error:
            raise KubeApiError(f"{method} {path}: {shorten(str(error), 200)}", unreachable=True) from None
        finally:
            connection.close()
        if response.status >= 300:
            detail = payload[:300].decode("utf-8", "replace")
            raise HttpStatusError(f"{method} {path}: HTTP {response.status}: {detail}", status=response.status)
        if len(payload) > limit:
            raise KubeApiError(f"{method} {path}: the answer is larger than {limit} bytes", unreachable=False)
        try:
            return json.loads(payload) if payload else None
        except (ValueError, RecursionError):
            raise KubeApiError(
                f"{method} {path}: the answer is not JSON: {payload[:100]!r}", unreachable=False
            ) from None

    def _node(self, node: str) -> dict[str, Any]:
        body = self._request("GET", _node_path(node))
        if not isinstance(body, dict):
            raise KubeApiError(f"GET {_node_path(node)}: the reply is not an object", unreachable=False)
        return body

    def node_labels(self, node: str) -> dict[str, str]:
        labels = (self._node(node).get("metadata") or {}).get("labels") or {}
        return {str(k): str(v) for k, v in labels.items()}

    def node_condition(self, node: str, condition_type: str) -> dict[str, Any] | None:
        """The node's status condition of this type, as the API server has it; None if it has none."""
        conditions = (self._node(node).get("status") or {}).get("conditions") or []
        return next((c for c in conditions if isinstance(c, dict) and c.get("type") == condition_type), None)

    def patch_node_condition(self, node: str, condition: Mapping[str, str]) -> None:
        """Set one condition through the status subresource, with a strategic merge patch: conditions merge by
        `type`, so kubelet's own conditions (and every other status field) are left as they are."""
        body = json.dumps({"status": {"conditions": [dict(condition)]}}).encode()
        self._request(
            "PATCH", f"{_node_path(node)}/status", body, content_type="application/strategic-merge-patch+json"
        )

    def patch_node_annotations(self, node: str, annotations: Mapping[str, str | None]) -> None:
        """JSON merge patch of metadata.annotations only; a None value removes the key."""
        body = json.dumps({"metadata": {"annotations": dict(annotations)}}).encode()
        self._request("PATCH", _node_path(node), body, content_type="application/merge-patch+json")


def _node_path(node: str) -> str:
    return f"/api/v1/nodes/{urllib.parse.quote(node, safe='')}"


def _split_server(server: str) -> tuple[str, str, int]:
    parsed = urllib.parse.urlsplit(server)
    if parsed.scheme not in ("https", "http") or not parsed.hostname:
        raise KubeConfigError(f"API server address {server!r} is not an http(s) URL")
    return parsed.scheme, parsed.hostname, parsed.port or (443 if parsed.scheme == "https" else 80)


def in_cluster(sa_dir: Path = SERVICE_ACCOUNT_DIR, env: Mapping[str, str] = os.environ) -> HttpNodeApi:
    host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT", "443")
    if not host:
        raise KubeConfigError("not in a cluster: KUBERNETES_SERVICE_HOST is unset (pass --kubeconfig)")
    context = ssl.create_default_context(cafile=str(sa_dir / "ca.crt"))
    return HttpNodeApi(_Endpoint(host, int(port), context, token_file=sa_dir / "token"))


def _data_or_file(entry: Mapping[str, Any], key: str, base: Path) -> bytes | None:
    if entry.get(f"{key}-data"):
        return base64.b64decode(entry[f"{key}-data"])
    if entry.get(key):
        return (base / str(entry[key])).read_bytes()
    return None


def from_kubeconfig(path: Path) -> HttpNodeApi:
    import yaml  # a dependency of the kubernetes package; loaded only when a kubeconfig is used

    try:
        config = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise KubeConfigError(f"kubeconfig {path}: {error}") from None
    try:
        context_name = config["current-context"]
        context = next(c["context"] for c in config["contexts"] if c["name"] == context_name)
        cluster = next(c["cluster"] for c in config["clusters"] if c["name"] == context["cluster"])
        user: dict[str, Any] = next(
            (u["user"] for u in config.get("users") or [] if u["name"] == context.get("user")), {}
        )
    except (KeyError, TypeError, StopIteration) as error:
        raise KubeConfigError(f"kubeconfig {path}: no usable current context ({error!r})") from None
    if user.get("exec") or user.get("auth-provider"):
        raise KubeConfigError(
            f"kubeconfig {path}: user {context.get('user')!r} needs an exec/auth-provider plugin; "
            "use a token or client certificate (or run in-cluster)"
        )
    scheme, host, port = _split_server(str(cluster["server"]))
    base = path.parent
    ssl_context = None
    if scheme == "https":
        ssl_context = ssl.create_default_context()
        ca = _data_or_file(cluster, "certificate-authority", base)
        if ca is not None:
            ssl_context.load_verify_locations(cadata=ca.decode())
        if cluster.get("insecure-skip-tls-verify"):
            ssl_context.check_hostname = False
            ssl_context.verify_mode = ssl.CERT_NONE
        cert, key = _data_or_file(user, "client-certificate", base), _data_or_file(user, "client-key", base)
        if cert is not None and key is not None:
            # ssl only loads client credentials from files; they live for the length of this call.
            with tempfile.TemporaryDirectory(prefix="kubeconfig-") as tmp:
                cert_file, key_file = Path(tmp) / "client.crt", Path(tmp) / "client.key"
                cert_file.write_bytes(cert)
                key_file.write_bytes(key)
                ssl_context.load_cert_chain(str(cert_file), str(key_file))
    token_file = base / str(user["tokenFile"]) if user.get("tokenFile") else None
    return HttpNodeApi(_Endpoint(host, port, ssl_context, token=user.get("token"), token_file=token_file))


def connect(kubeconfig: str) -> HttpNodeApi:
    """The client for --kubeconfig: "" = in-cluster, else a kubeconfig path ("none" is handled by the caller)."""
    return in_cluster() if kubeconfig == "" else from_kubeconfig(Path(kubeconfig))
