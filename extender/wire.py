"""The extender's JSON wire format: decode requests into frozen typed values, encode replies. Pure.

kube-scheduler's extender types carry no json tags, so their keys are Go field names (PascalCase: `Pod`,
`Nodes`, `NodeNames`, `PodName`...) while the embedded Pod and Node objects are ordinary camelCase Kubernetes
JSON. Go's nil encodes as `null`, so every optional field here accepts `null`. Anything malformed raises
WireError with the JSON path of the offending field: the server turns it into a 400.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from neuronalloc.requests import ContainerSpec, PodRequest, RequestError, is_sidecar, pod_request
from neuronalloc.text import MAX_MESSAGE, shorten

__all__ = [
    "MAX_NODES",
    "BindingArgs",
    "ExtenderArgs",
    "NodeInfo",
    "PodInfo",
    "WireError",
    "decode_json",
    "encode_binding_result",
    "encode_error",
    "encode_filter_reply",
    "encode_filter_result",
    "encode_members",
    "encode_priorities",
    "object_key",
    "parse_binding_args",
    "parse_extender_args",
    "parse_node",
    "parse_pod",
]

# Kubernetes supports 5,000 nodes per cluster; twenty times that is not a cluster, it is garbage.
MAX_NODES = 100_000
# DNS subdomain limit for object names (RFC 1123).
_MAX_NAME = 253
# A path is built from the document's own keys (`...annotations.<key>`): it is quoted, not copied.
_MAX_PATH = 240


class WireError(ValueError):
    """A request that does not match the extender wire format. `path` names the field (`Pod.spec.containers[0]`)."""

    def __init__(self, path: str, problem: str) -> None:
        path = shorten(path, _MAX_PATH)
        problem = shorten(problem, MAX_MESSAGE - len(path) - 2)
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


@dataclass(frozen=True, slots=True)
class PodInfo:
    namespace: str
    name: str
    uid: str
    node_name: str  # spec.nodeName, "" while unbound
    created: str  # metadata.creationTimestamp (RFC 3339 sorts as text), "" if absent
    phase: str  # status.phase, "" if absent
    request: PodRequest
    scheduler_name: str = "default-scheduler"  # spec.schedulerName, defaulted as the API server does
    # When the API server bound it: the PodScheduled condition's lastTransitionTime once True (the binding sets
    # it in the same write as spec.nodeName), to the second; "" if absent.
    scheduled: str = ""

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class NodeInfo:
    name: str
    annotations: Mapping[str, str]
    raw: Mapping[str, Any]  # the node object as received, echoed back unchanged in Nodes mode


@dataclass(frozen=True, slots=True)
class ExtenderArgs:
    """Filter/prioritize arguments. Exactly one of `nodes` (nodeCacheCapable false) and `node_names`
    (nodeCacheCapable true) is set; the reply uses the same mode."""

    pod: PodInfo
    nodes: tuple[NodeInfo, ...] | None
    node_names: tuple[str, ...] | None

    @property
    def names(self) -> tuple[str, ...]:
        if self.node_names is not None:
            return self.node_names
        return tuple(n.name for n in self.nodes or ())


@dataclass(frozen=True, slots=True)
class BindingArgs:
    pod_name: str
    pod_namespace: str
    pod_uid: str
    node: str

    @property
    def pod_key(self) -> str:
        return f"{self.pod_namespace}/{self.pod_name}"


def decode_json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as err:
        raise WireError("body", f"not valid JSON ({shorten(str(err))})") from None


def _object(value: Any, path: str, *, nullable: bool = False) -> Mapping[str, Any]:
    if value is None and nullable:
        return {}
    if not isinstance(value, dict):
        raise WireError(path, f"expected an object, got {_kind(value)}")
    return value


def _list(value: Any, path: str, *, limit: int) -> Sequence[Any]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise WireError(path, f"expected a list or null, got {_kind(value)}")
    if len(value) > limit:
        raise WireError(path, f"{len(value)} entries is above the limit of {limit}")
    return value


def _string(value: Any, path: str, *, required: bool = False, default: str = "") -> str:
    if value is None:
        if required:
            raise WireError(path, "required, got null or nothing")
        return default
    if not isinstance(value, str):
        raise WireError(path, f"expected a string, got {_kind(value)}")
    if required and not value:
        raise WireError(path, "required, got an empty string")
    if len(value) > _MAX_NAME:  # names, namespaces, UIDs, phases, timestamps: all short in any real object
        raise WireError(path, f"{len(value)} characters is above the limit of {_MAX_NAME}")
    return value


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__.replace("dict", "object").replace("str", "string")


def _quantities(value: Any, path: str) -> Mapping[str, str]:
    raw = _object(value, path, nullable=True)
    out: dict[str, str] = {}
    for name, quantity in raw.items():
        # Quantities are JSON strings; a bare integer is accepted because hand-written clients send them.
        if isinstance(quantity, str):
            out[name] = quantity
        elif isinstance(quantity, int) and not isinstance(quantity, bool):
            out[name] = str(quantity)
        else:
            raise WireError(f"{path}.{name}", f"expected a quantity string, got {_kind(quantity)}")
    return out


def _containers(value: Any, path: str, *, init: bool) -> tuple[ContainerSpec, ...]:
    specs = []
    for i, item in enumerate(_list(value, path, limit=1000)):
        where = f"{path}[{i}]"
        container = _object(item, where)
        resources = _object(container.get("resources"), f"{where}.resources", nullable=True)
        specs.append(
            ContainerSpec(
                name=_string(container.get("name"), f"{where}.name", default=f"#{i}"),
                limits=_quantities(resources.get("limits"), f"{where}.resources.limits"),
                requests=_quantities(resources.get("requests"), f"{where}.resources.requests"),
                sidecar=is_sidecar(init, container.get("restartPolicy")),
            )
        )
    return tuple(specs)


def parse_pod(doc: Any, path: str = "Pod") -> PodInfo:
    pod = _object(doc, path)
    meta = _object(pod.get("metadata"), f"{path}.metadata")
    spec = _object(pod.get("spec"), f"{path}.spec", nullable=True)
    status = _object(pod.get("status"), f"{path}.status", nullable=True)
    containers = _containers(spec.get("containers"), f"{path}.spec.containers", init=False)
    init_containers = _containers(spec.get("initContainers"), f"{path}.spec.initContainers", init=True)
    try:
        request = pod_request(containers, init_containers)
    except RequestError as err:
        raise WireError(f"{path}.spec", str(err)) from None
    return PodInfo(
        namespace=_string(meta.get("namespace"), f"{path}.metadata.namespace", default="default") or "default",
        name=_string(meta.get("name"), f"{path}.metadata.name", required=True),
        uid=_string(meta.get("uid"), f"{path}.metadata.uid"),
        node_name=_string(spec.get("nodeName"), f"{path}.spec.nodeName"),
        created=_string(meta.get("creationTimestamp"), f"{path}.metadata.creationTimestamp"),
        phase=_string(status.get("phase"), f"{path}.status.phase"),
        request=request,
        scheduler_name=_string(spec.get("schedulerName"), f"{path}.spec.schedulerName") or "default-scheduler",
        scheduled=_scheduled(status.get("conditions")),
    )


def _scheduled(value: Any) -> str:
    """The lastTransitionTime of a True PodScheduled condition, or "" (also for conditions that are not shaped
    as the API server writes them: this is evidence of order, never a reason to skip the pod). Conditions are one
    per type, a handful; only the first 64 are read."""
    if not isinstance(value, list):
        return ""
    for condition in value[:64]:
        if not isinstance(condition, dict):
            continue
        if condition.get("type") == "PodScheduled" and condition.get("status") == "True":
            when = condition.get("lastTransitionTime")
            return when if isinstance(when, str) and len(when) <= 64 else ""
    return ""


def parse_node(doc: Any, path: str = "Node") -> NodeInfo:
    node = _object(doc, path)
    meta = _object(node.get("metadata"), f"{path}.metadata")
    annotations = _object(meta.get("annotations"), f"{path}.metadata.annotations", nullable=True)
    for key, value in annotations.items():
        if not isinstance(value, str):
            raise WireError(f"{path}.metadata.annotations.{key}", f"expected a string, got {_kind(value)}")
    return NodeInfo(
        name=_string(meta.get("name"), f"{path}.metadata.name", required=True),
        annotations=annotations,
        raw=node,
    )


def object_key(kind: str, doc: Any) -> str:
    """The cache key of a Node ("name") or a Pod ("namespace/name"), e.g. from a DELETED watch event."""
    meta = _object(_object(doc, kind).get("metadata"), f"{kind}.metadata")
    name = _string(meta.get("name"), f"{kind}.metadata.name", required=True)
    if kind == "nodes":
        return name
    return f"{_string(meta.get('namespace'), f'{kind}.metadata.namespace') or 'default'}/{name}"


def parse_extender_args(doc: Any) -> ExtenderArgs:
    args = _object(doc, "ExtenderArgs")
    pod = parse_pod(args.get("Pod"), "Pod")
    raw_names = args.get("NodeNames")
    if raw_names is not None:
        names = tuple(_list(raw_names, "NodeNames", limit=MAX_NODES))
        # C-level checks, not a pass per name (5,000 names per request): join raises on a non-string, and the
        # slow path only words the error. No length check: a name longer than a Node's name can be is simply
        # not in the node cache, and is answered as an unknown node like any other name it does not hold.
        try:
            "".join(names)
            malformed = "" in names
        except TypeError:
            malformed = True
        if malformed:
            for i, name in enumerate(names):
                if not isinstance(name, str) or not name:
                    got = "an empty string" if isinstance(name, str) else _kind(name)
                    raise WireError(f"NodeNames[{i}]", f"expected a node name, got {got}")
        return ExtenderArgs(pod=pod, nodes=None, node_names=names)
    raw_nodes = args.get("Nodes")
    if raw_nodes is None:
        # Both null: the scheduler passes no candidate, and an empty reply in Nodes mode says the same.
        return ExtenderArgs(pod=pod, nodes=(), node_names=None)
    node_list = _object(raw_nodes, "Nodes")
    items = _list(node_list.get("items"), "Nodes.items", limit=MAX_NODES)
    nodes = tuple(parse_node(item, f"Nodes.items[{i}]") for i, item in enumerate(items))
    return ExtenderArgs(pod=pod, nodes=nodes, node_names=None)


def parse_binding_args(doc: Any) -> BindingArgs:
    args = _object(doc, "ExtenderBindingArgs")
    return BindingArgs(
        pod_name=_string(args.get("PodName"), "PodName", required=True),
        pod_namespace=_string(args.get("PodNamespace"), "PodNamespace", required=True),
        pod_uid=_string(args.get("PodUID"), "PodUID"),
        node=_string(args.get("Node"), "Node", required=True),
    )


def encode_filter_result(
    args: ExtenderArgs,
    passed: Iterable[str],
    failed: Mapping[str, str],
    unresolvable: Mapping[str, str],
    error: str = "",
) -> bytes:
    """ExtenderFilterResult in the request's own mode. `passed` keeps the request's order."""
    return encode_filter_reply(args, passed, encode_members(failed), encode_members(unresolvable), error)


def encode_members(reasons: Mapping[str, str]) -> bytes:
    """The members of a JSON object, `"n1":"why","n2":"why"`, exactly as orjson writes them in a whole one."""
    return orjson.dumps(dict(reasons))[1:-1]


def encode_filter_reply(
    args: ExtenderArgs, passed: Iterable[str], failed_members: bytes, unresolvable_members: bytes, error: str = ""
) -> bytes:
    """`encode_filter_result` with FailedNodes and FailedAndUnresolvableNodes given as the already-encoded
    members of their objects (`"n1":"why","n2":"why"`). The same bytes orjson writes for the whole result:
    keys in the Go struct's order, no spaces."""
    if args.node_names is not None:
        head = b'{"Nodes":null,"NodeNames":' + orjson.dumps(list(passed))
    else:
        passing = set(passed)
        items = [n.raw for n in args.nodes or () if n.name in passing]
        head = b'{"Nodes":' + orjson.dumps({"items": items}) + b',"NodeNames":null'
    return b"".join((
        head, b',"FailedNodes":{', failed_members, b'},"FailedAndUnresolvableNodes":{', unresolvable_members,
        b'},"Error":', orjson.dumps(error), b"}",
    ))  # fmt: skip


def encode_priorities(scores: Iterable[tuple[str, int]]) -> bytes:
    return orjson.dumps([{"Host": host, "Score": score} for host, score in scores])  # fmt: skip


def encode_binding_result(error: str = "") -> bytes:
    return orjson.dumps({"Error": error})


def encode_error(message: str) -> bytes:
    """The body of every 4xx/5xx: one `Error` key, like the extender result types."""
    return orjson.dumps({"Error": message})
