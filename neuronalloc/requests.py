"""A pod's Neuron needs, container by container, in the order kubelet allocates them: the one rule the
extender places by and `kubectl neuron` shows.

Kubelet's device manager allocates per container: init containers first, in order, then app containers.
A sidecar (an init container with `restartPolicy: Always`) keeps its devices for the pod's life, like an app
container. A regular init container runs alone, after the sidecars declared before it, and its devices are
handed back before the app containers start. That is Kubernetes' effective-request rule, kept container by
container so the extender can place each block exactly as the node will; `PodRequest.peak` is the pod's
effective request of one resource (what it holds at its busiest), which is what `kubectl neuron` shows.
A quantity that is not a whole number in range is an error (`RequestError`), never 0.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from neuronalloc.resources import Resource
from neuronalloc.text import quote

__all__ = [
    "MAX_CONTAINER_SIZE",
    "ContainerSpec",
    "Need",
    "PodRequest",
    "RequestError",
    "RequestShape",
    "Step",
    "container_spec",
    "is_sidecar",
    "pod_request",
    "pod_request_from_spec",
]

# A bigger number than any Neuron node has by two orders of magnitude: beyond it a request is garbage, not a
# request that merely does not fit, and it is refused as bad input before it reaches the allocator.
MAX_CONTAINER_SIZE = 4096

# One block to place: (resource name, size, kept for the pod's life). A pod's shape is its steps in order.
# Plain strings, not the Resource enum: shapes are hashed on every filter lookup, and Enum.__hash__ is slow.
# (Not `neuronalloc.shapes.Shape`, which is the shape of a free set.)
Step = tuple[str, int, bool]
RequestShape = tuple[Step, ...]

# neurondevice: the whole-device alias AWS's older plugin served; placed exactly as neuron.
_NEURON_RESOURCES: tuple[Resource, ...] = (Resource.NEURON, Resource.NEURONCORE, Resource.NEURONDEVICE)


class RequestError(ValueError):
    """A container's Neuron quantity is not a whole number in range; the message names the container."""


@dataclass(frozen=True, slots=True)
class ContainerSpec:
    """The parts of a container spec that decide its Neuron needs (strings exactly as the API gives them)."""

    name: str
    limits: Mapping[str, str]
    requests: Mapping[str, str]
    sidecar: bool = False


@dataclass(frozen=True, slots=True)
class Need:
    """One block one container needs. `keeps` is False for a regular init container: it needs the block
    free when it runs, then hands it back."""

    container: str
    resource: Resource
    size: int
    keeps: bool = True

    @property
    def shape(self) -> Step:
        return (self.resource.value, self.size, self.keeps)


@dataclass(frozen=True, slots=True)
class PodRequest:
    """Every block a pod needs, in kubelet's allocation order. Empty = the pod asks for no Neuron resource."""

    needs: tuple[Need, ...]
    # A hashable key: two pods with the same shape fit (and score) the same on the same node state.
    shape: RequestShape = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(need.shape for need in self.needs))

    def total(self, resource: Resource) -> int:
        """What the pod holds for its life (kept blocks only)."""
        return sum(n.size for n in self.needs if n.resource is resource and n.keeps)

    def peak(self, resource: Resource) -> int:
        """The most of `resource` the pod holds at once (Kubernetes' effective request): its kept blocks, or a
        regular init container's block beside the sidecars declared before it, whichever is larger."""
        kept = peak = 0
        for need in self.needs:
            if need.resource is not resource:
                continue
            if need.keeps:
                kept += need.size
            else:
                peak = max(peak, kept + need.size)
        return max(peak, kept)

    @property
    def empty(self) -> bool:
        return not self.needs


_MAX_DIGITS = len(str(MAX_CONTAINER_SIZE))


def _quantity(container: str, resource: Resource, raw: str) -> int:
    # Extended resources are whole numbers; the API server stores them canonically ("4"), so anything else
    # ("1.5", "4k", "-2") is a malformed request, not a size.
    if not raw.isascii() or not raw.isdigit():
        raise RequestError(
            f"container {quote(container, 80)}: {resource.value} quantity {quote(raw, 40)} is not a whole number "
            f"of {'devices' if resource.whole_devices else 'cores'}"
        )
    # Count digits before int(): a 5,000-digit string is garbage, and int() would raise its own ValueError.
    digits = raw.lstrip("0") or "0"
    if len(digits) > _MAX_DIGITS or int(digits) > MAX_CONTAINER_SIZE:
        raise RequestError(
            f"container {quote(container, 80)}: {resource.value} quantity {quote(raw, 40)} is above "
            f"{MAX_CONTAINER_SIZE}, which no node can hold"
        )
    return int(digits)


def _container_needs(spec: ContainerSpec, keeps: bool) -> list[Need]:
    needs = []
    for resource in _NEURON_RESOURCES:
        # Kubelet allocates devices for what is in limits; for extended resources requests must equal limits,
        # and a request alone is defaulted into limits by the API server. Limits first, else requests.
        raw = spec.limits.get(resource.value, spec.requests.get(resource.value))
        if raw is None:
            continue
        size = _quantity(spec.name, resource, raw)
        if size > 0:
            needs.append(Need(spec.name, resource, size, keeps))
    return needs


def pod_request(containers: tuple[ContainerSpec, ...], init_containers: tuple[ContainerSpec, ...]) -> PodRequest:
    """The pod's needs in kubelet's allocation order. Raises RequestError on a malformed quantity."""
    needs: list[Need] = []
    for spec in init_containers:
        needs.extend(_container_needs(spec, keeps=spec.sidecar))
    for spec in containers:
        needs.extend(_container_needs(spec, keeps=True))
    return PodRequest(tuple(needs))


def is_sidecar(init: bool, restart_policy: object) -> bool:
    """A sidecar is an init container with `restartPolicy: Always`: it runs, and keeps its devices, for the
    pod's life."""
    return init and restart_policy == "Always"


def _quantities(value: Any) -> dict[str, str]:
    # Only the Neuron quantities matter; a bare integer is what hand-written clients send.
    if not isinstance(value, Mapping):
        return {}
    return {r.value: str(value[r.value]) for r in _NEURON_RESOURCES if r.value in value}


def container_spec(container: Any, index: int, *, init: bool) -> ContainerSpec:
    """A container of an API object (a dict, as the API server returned it) as its Neuron-relevant parts.
    Lenient about everything but the Neuron quantities, which `pod_request` checks."""
    if not isinstance(container, Mapping):
        return ContainerSpec(f"#{index}", {}, {})
    resources = container.get("resources")
    resources = resources if isinstance(resources, Mapping) else {}
    name = container.get("name")
    return ContainerSpec(
        name=name if isinstance(name, str) and name else f"#{index}",
        limits=_quantities(resources.get("limits")),
        requests=_quantities(resources.get("requests")),
        sidecar=is_sidecar(init, container.get("restartPolicy")),
    )


def _specs(value: Any, *, init: bool) -> tuple[ContainerSpec, ...]:
    items = value if isinstance(value, list) else []
    return tuple(container_spec(item, i, init=init) for i, item in enumerate(items))


def pod_request_from_spec(spec: Any) -> PodRequest:
    """`pod_request` for a pod spec as the API server returned it. Raises RequestError on a malformed quantity."""
    spec = spec if isinstance(spec, Mapping) else {}
    return pod_request(_specs(spec.get("containers"), init=False), _specs(spec.get("initContainers"), init=True))
