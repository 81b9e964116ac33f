"""The driver's API-server calls: its node, its ResourceSlices, and the ResourceClaims kubelet asks it to prepare.

The same stdlib client as the device plugin (plugin/kubeapi.py: in-cluster service account or a kubeconfig, the
token re-read per request), with every answer read through a size bound: a claim or a slice list larger than the
bound is refused, never parsed. Blocking: callers run it in a daemon thread.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Mapping
from typing import Any

from neuronalloc.draslices import DRIVER
from neuronalloc.text import shorten
from plugin.kubeapi import HttpNodeApi, HttpStatusError, KubeApiError, connect

RESOURCE_API = "/apis/resource.k8s.io/v1"
# etcd refuses objects above 1.5 MiB; a claim is far smaller. A node's slice list is a few hundred KiB.
MAX_CLAIM_BYTES = 2 * 1024 * 1024
MAX_LIST_BYTES = 16 * 1024 * 1024
MAX_NODE_BYTES = 4 * 1024 * 1024


class DraApi(HttpNodeApi):
    """`HttpNodeApi` plus the resource.k8s.io calls, each with a bound on what it reads."""

    @classmethod
    def of(cls, api: HttpNodeApi) -> DraApi:
        return cls(api._endpoint)

    user_agent = "neuron-dra-driver"

    def call(self, method: str, path: str, body: Any = None, *, limit: int = MAX_CLAIM_BYTES) -> Any:
        data = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        return self._request(method, path, data, "application/json" if data is not None else "", limit=limit)

    # -- node ----------------------------------------------------------------------------------------------
    def node(self, name: str) -> Mapping[str, Any]:
        doc = self.call("GET", f"/api/v1/nodes/{_quote(name)}", limit=MAX_NODE_BYTES)
        if not isinstance(doc, dict):
            raise KubeApiError(f"node {shorten(name, 60)}: the answer is not an object", unreachable=False)
        return doc

    # -- claims --------------------------------------------------------------------------------------------
    def claim(self, namespace: str, name: str) -> Any:
        return self.call("GET", f"{RESOURCE_API}/namespaces/{_quote(namespace)}/resourceclaims/{_quote(name)}")

    # -- slices --------------------------------------------------------------------------------------------
    def node_slices(self, node: str) -> list[Any]:
        selector = urllib.parse.quote(f"spec.nodeName={node},spec.driver={DRIVER}", safe="")
        doc = self.call("GET", f"{RESOURCE_API}/resourceslices?fieldSelector={selector}", limit=MAX_LIST_BYTES)
        items = doc.get("items") if isinstance(doc, dict) else None
        if not isinstance(items, list):
            raise KubeApiError("ResourceSlice list: no items", unreachable=False)
        return items

    def create_slice(self, doc: Mapping[str, Any]) -> None:
        self.call("POST", f"{RESOURCE_API}/resourceslices", doc)

    def replace_slice(self, name: str, doc: Mapping[str, Any]) -> None:
        self.call("PUT", f"{RESOURCE_API}/resourceslices/{_quote(name)}", doc)

    def delete_slice(self, name: str) -> None:
        try:
            self.call("DELETE", f"{RESOURCE_API}/resourceslices/{_quote(name)}")
        except HttpStatusError as error:
            if error.status != 404:
                raise


def _quote(text: str) -> str:
    return urllib.parse.quote(text, safe="")


def connect_dra(kubeconfig: str) -> DraApi:
    """The client for --kubeconfig ("" = in-cluster)."""
    return DraApi.of(connect(kubeconfig))
