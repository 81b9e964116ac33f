"""Reads what `kubectl neuron` shows from the API server, and nothing else.

Three list calls, each paged (`limit` + `continue`) so that a 5,000-node cluster costs a few round trips:
all nodes, the Pending pods not yet bound (`status.phase=Pending,spec.nodeName=`), and the
`FailedScheduling` events that say why they wait. The events are read only when some pod is Pending.
Objects stay raw JSON dicts: `view` turns them into what is shown.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from neuronalloc.draslices import DRIVER as DRA_DRIVER

PAGE_SIZE = 500
PENDING_SELECTOR = "status.phase=Pending,spec.nodeName="
SCHEDULING_EVENTS_SELECTOR = "reason=FailedScheduling"

Obj = dict[str, Any]


class ClusterReadError(RuntimeError):
    """The API server could not be read; the message names the call and the cause."""


@dataclass(frozen=True)
class Snapshot:
    nodes: list[Obj]
    pending_pods: list[Obj]
    events: list[Obj]
    warnings: tuple[str, ...] = ()
    resource_slices: list[Obj] = field(default_factory=list)  # DRA mode: our driver's slices
    resource_claims: list[Obj] = field(default_factory=list)  # DRA mode: every ResourceClaim (allocations)


def _list_all(what: str, call: Callable[..., Any], timeout: float, **kwargs: Any) -> list[Obj]:
    items: list[Obj] = []
    token: str | None = None
    while True:
        page_args = dict(kwargs, limit=PAGE_SIZE, _preload_content=False, _request_timeout=timeout)
        if token:
            page_args["_continue"] = token
        try:
            response = call(**page_args)
            page = json.loads(response.data)
        except ApiException as err:
            raise ClusterReadError(f"listing {what}: HTTP {err.status} {err.reason}: {_api_message(err)}") from err
        except (HTTPError, OSError) as err:
            raise ClusterReadError(f"listing {what}: cannot reach the API server: {err}") from err
        except ValueError as err:
            raise ClusterReadError(f"listing {what}: the API server's answer is not JSON: {err}") from err
        items.extend(page.get("items") or [])
        token = (page.get("metadata") or {}).get("continue") or None
        if token is None:
            return items


def _api_message(err: ApiException) -> str:
    try:
        return str(json.loads(err.body).get("message", err.body))
    except (TypeError, ValueError):
        return str(err.body)


def read_snapshot(api: client.ApiClient, *, node_selector: str = "", timeout: float = 30.0) -> Snapshot:
    core = client.CoreV1Api(api)
    nodes = _list_all("nodes", core.list_node, timeout, label_selector=node_selector)
    pending = _list_all("pending pods", core.list_pod_for_all_namespaces, timeout, field_selector=PENDING_SELECTOR)
    events: list[Obj] = []
    warnings: list[str] = []
    if pending:
        # Without events the view still shows each pod's PodScheduled condition: degrade, do not fail.
        try:
            events = _list_all(
                "scheduling events",
                core.list_event_for_all_namespaces,
                timeout,
                field_selector=SCHEDULING_EVENTS_SELECTOR,
            )
        except ClusterReadError as err:
            warnings.append(f"{err}; showing PodScheduled conditions instead")
    slices, claims = _dra_objects(api, timeout, warnings)
    return Snapshot(
        nodes=nodes, pending_pods=pending, events=events, warnings=tuple(warnings),
        resource_slices=slices, resource_claims=claims,
    )  # fmt: skip


def _dra_objects(api: client.ApiClient, timeout: float, warnings: list[str]) -> tuple[list[Obj], list[Obj]]:
    """DRA mode's slices (of our driver) and claims; none on a cluster that does not serve resource.k8s.io/v1.
    The claims are read only when some slice exists: a device-plugin-only cluster pays one call."""
    resource = client.ResourceV1Api(api)
    try:
        slices = _list_all(
            "resourceslices", resource.list_resource_slice, timeout, field_selector=f"spec.driver={DRA_DRIVER}"
        )
        claims = _list_all("resourceclaims", resource.list_resource_claim_for_all_namespaces, timeout) if slices else []
    except ClusterReadError as err:
        if "HTTP 404" not in str(err):
            warnings.append(f"{err}; DRA nodes are not shown")
        return [], []
    return slices, claims
