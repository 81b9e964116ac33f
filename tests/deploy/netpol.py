"""NetworkPolicy ingress semantics (networking.k8s.io/v1), to ask the manifests "may this pod reach that port".

What a conforming CNI enforces, in the parts these manifests use: a pod selected by any Ingress policy of its
namespace is isolated; a connection to it is then admitted if some rule of some selecting policy matches the
source (podSelector alone = pods of the policy's namespace; namespaceSelector alone = every pod of matching
namespaces; both = matching pods of matching namespaces; ipBlock = the source's IP) and the port (number or the
target container's port name; TCP when unset). Traffic from the pod's own node (kubelet's probes) is always
admitted and is not modelled here.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

from tests.deploy.tools import Obj


@dataclass(frozen=True)
class Pod:
    namespace: str
    labels: dict[str, str]
    namespace_labels: dict[str, str] = field(default_factory=dict)
    ip: str = "192.0.2.1"
    ports: dict[str, int] = field(default_factory=dict)  # container port name -> number (targets only)

    def __post_init__(self) -> None:
        # Every namespace carries its own name as a label (the API server sets it).
        self.namespace_labels.setdefault("kubernetes.io/metadata.name", self.namespace)


def selects(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    """A LabelSelector; an empty one selects everything."""
    selector = selector or {}
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values") or []
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[operator]
        if not ok:
            return False
    return True


def _peer_matches(peer: dict[str, Any], policy_namespace: str, source: Pod) -> bool:
    if "ipBlock" in peer:
        block = peer["ipBlock"]
        address = ipaddress.ip_address(source.ip)
        return address in ipaddress.ip_network(block["cidr"]) and not any(
            address in ipaddress.ip_network(cidr) for cidr in block.get("except") or []
        )
    if "namespaceSelector" in peer:
        if not selects(peer["namespaceSelector"], source.namespace_labels):
            return False
    elif source.namespace != policy_namespace:
        return False
    return "podSelector" not in peer or selects(peer["podSelector"], source.labels)


def _port_matches(rule_port: dict[str, Any], target: Pod, port: int) -> bool:
    if rule_port.get("protocol", "TCP") != "TCP":
        return False
    wanted = rule_port.get("port")
    if wanted is None:
        return True
    if isinstance(wanted, str):
        wanted = target.ports.get(wanted, -1)
    return bool(wanted <= port <= rule_port.get("endPort", wanted))


def admits(objs: list[Obj], source: Pod, target: Pod, port: int) -> bool:
    """Whether the NetworkPolicies in `objs` let `source` open a TCP connection to `target`'s `port`."""
    selecting = [
        o for o in objs
        if o["kind"] == "NetworkPolicy"
        and o["metadata"].get("namespace") == target.namespace
        and "Ingress" in (o["spec"].get("policyTypes") or ["Ingress"])
        and selects(o["spec"]["podSelector"], target.labels)
    ]  # fmt: skip
    if not selecting:
        return True  # not isolated
    for policy in selecting:
        for rule in policy["spec"].get("ingress") or []:
            peers = rule.get("from") or []
            ports = rule.get("ports") or []
            peer_ok = not peers or any(_peer_matches(p, target.namespace, source) for p in peers)
            port_ok = not ports or any(_port_matches(p, target, port) for p in ports)
            if peer_ok and port_ok:
                return True
    return False
