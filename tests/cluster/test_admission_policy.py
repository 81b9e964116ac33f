"""The device plugin's node writes, confined by the API server itself (deploy/plugin/admission-policy.yaml).

RBAC lets the plugin's service account patch nodes and their status, any node (it cannot say which); the
ValidatingAdmissionPolicy lets it change only the node named in its token, and there only `neuron-contig.io/`
annotations and, through the status subresource, the `NeuronDevicesHealthy` condition. Shown on the
cluster tier's real kube-apiserver (v1.35) with the manifests of deploy/ applied as they ship: the plugin's
service account and RBAC, the policy and its binding; two Nodes; a Pod of that service account bound to node A;
a TokenRequest bound to that Pod. The API server writes node A's name into that token by itself (pod-bound
tokens carry the pod's node since 1.30, on by default; GA and locked on since 1.32: the tier's API server runs
without any extra flag), and the requests below are made with that token over HTTPS, as the plugin makes them
(JSON merge patches of the node, strategic merge patches of its status). Without the policy, every refused
request here succeeds: RBAC alone allows them.
"""

from __future__ import annotations

import json
import ssl
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s
from kubernetes.dynamic import DynamicClient

from tests.cluster.harness import ADMIN_TOKEN, REPO_ROOT, Cluster

NAMESPACE = "kube-system"
SERVICE_ACCOUNT = "neuron-contig-device-plugin"
POLICY = "neuron-contig-device-plugin-node-writes"
MANIFESTS = [REPO_ROOT / "deploy" / "plugin" / "rbac.yaml", REPO_ROOT / "deploy" / "plugin" / "admission-policy.yaml"]
NODE_NAME_KEY = "authentication.kubernetes.io/node-name"
ACTIVATION_TIMEOUT = 30.0
CONDITION = "NeuronDevicesHealthy"
STRATEGIC = "application/strategic-merge-patch+json"


@dataclass
class Setup:
    cluster: Cluster
    node_a: str
    node_b: str
    token: str  # bound to a pod on node A
    unbound_token: str  # the same service account, bound to nothing
    pending_token: str  # bound to a pod that no node runs yet


def manifest_objects() -> list[dict[str, Any]]:
    return [d for path in MANIFESTS for d in yaml.safe_load_all(path.read_text()) if d]


def request(
    cluster: Cluster, token: str, method: str, path: str, body: Any = None, content_type: str = ""
) -> tuple[int, dict[str, Any]]:
    """One HTTPS call to the API server with `token` (a PATCH is a JSON merge patch unless `content_type` says
    otherwise, as the plugin sends them); (status, decoded JSON body)."""
    data = None if body is None else json.dumps(body).encode()
    content_type = content_type or ("application/merge-patch+json" if method == "PATCH" else "application/json")
    req = urllib.request.Request(
        f"https://127.0.0.1:{cluster.api_port}{path}", data=data, method=method,
        headers={"Authorization": f"Bearer {token}", "Content-Type": content_type, "Accept": "application/json"},
    )  # fmt: skip
    context = ssl.create_default_context(cafile=str(cluster.pki / "apiserver.crt"))
    try:
        with urllib.request.urlopen(req, timeout=10, context=context) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def patch_node(setup: Setup, name: str, patch: dict[str, Any], token: str | None = None) -> tuple[int, str]:
    status, body = request(setup.cluster, token or setup.token, "PATCH", f"/api/v1/nodes/{name}", patch)
    return status, str(body.get("message", ""))


def patch_status(setup: Setup, name: str, patch: dict[str, Any], token: str | None = None) -> tuple[int, str]:
    """A strategic merge patch of the node's status subresource, as the plugin sets its condition."""
    path = f"/api/v1/nodes/{name}/status"
    status, body = request(setup.cluster, token or setup.token, "PATCH", path, patch, content_type=STRATEGIC)
    return status, str(body.get("message", ""))


def condition(status: str = "False", **fields: Any) -> dict[str, Any]:
    return {"status": {"conditions": [{
        "type": CONDITION, "status": status, "reason": "NeuronHardwareError",
        "message": "1 of 12 Neuron devices unhealthy, not offered to pods: hw_error:DMA_ERROR on 3",
        "lastHeartbeatTime": "2026-11-22T02:05:56Z", "lastTransitionTime": "2026-11-22T02:05:56Z", **fields,
    }]}}  # fmt: skip


def conditions(cluster: Cluster, name: str) -> dict[str, dict[str, Any]]:
    node = cluster.core.read_node(name)
    return {c.type: c.to_dict() for c in node.status.conditions or []}


def annotations(cluster: Cluster, name: str) -> dict[str, str]:
    return dict(cluster.core.read_node(name).metadata.annotations or {})


def _create_node(cluster: Cluster, name: str) -> None:
    capacity = {"cpu": "192", "memory": "768Gi", "pods": "110", "aws.amazon.com/neuron": "12"}
    cluster.core.create_node(
        {
            "metadata": {
                "name": name,
                "labels": {"node.kubernetes.io/instance-type": "inf2.48xlarge", "team": "ml"},
                "annotations": {"example.com/owner": "ops", "neuron-contig.io/devices": "12"},
            },
            "spec": {"taints": [{"key": "aws.amazon.com/neuron", "effect": "NoSchedule"}]},
            # A node's status is kept on create (a kubelet would write the same).
            "status": {
                "capacity": capacity,
                "allocatable": capacity,
                "addresses": [{"type": "InternalIP", "address": "10.0.1.7"}],
                "conditions": [
                    {"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "kubelet is posting"},
                    {"type": "MemoryPressure", "status": "False", "reason": "KubeletHasSufficientMemory"},
                ],
            },
        }
    )


def _create_pod(cluster: Cluster, name: str, node: str | None) -> k8s.V1Pod:
    spec: dict[str, Any] = {
        "serviceAccountName": SERVICE_ACCOUNT,
        "containers": [{"name": "device-plugin", "image": "neuron-contig:test"}],
    }
    if node:
        spec["nodeName"] = node
    return cluster.core.create_namespaced_pod(NAMESPACE, {"metadata": {"name": name}, "spec": spec})


def _token(cluster: Cluster, pod: k8s.V1Pod | None) -> str:
    spec: dict[str, Any] = {"audiences": [], "expirationSeconds": 600}
    if pod is not None:
        spec["boundObjectRef"] = {"apiVersion": "v1", "kind": "Pod", "name": pod.metadata.name, "uid": pod.metadata.uid}
    response = cluster.core.create_namespaced_service_account_token(SERVICE_ACCOUNT, NAMESPACE, {"spec": spec})
    return str(response.status.token)


def _wait_until_enforced(setup: Setup) -> None:
    """The API server starts enforcing a new policy once its informer has it (about a second). Until then
    RBAC alone decides, and a patch of node B goes through; wait for the policy's own refusal."""
    deadline = time.monotonic() + ACTIVATION_TIMEOUT
    while True:
        status, message = patch_node(setup, setup.node_b, {"metadata": {"annotations": {"neuron-contig.io/x": "1"}}})
        if status == 403 and POLICY in message:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"the policy was not enforced within {ACTIVATION_TIMEOUT} s: {status} {message}")
        time.sleep(0.3)


@pytest.fixture(scope="module")
def setup(cluster: Cluster) -> Iterator[Setup]:
    suffix = uuid.uuid4().hex[:6]
    dynamic = DynamicClient(cluster.api)
    objects = manifest_objects()
    for obj in objects:
        api = dynamic.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
        api.server_side_apply(body=obj, name=obj["metadata"]["name"], namespace=obj["metadata"].get("namespace"),
                              field_manager="neuron-contig-tests")  # fmt: skip
    node_a, node_b = f"vap-a-{suffix}", f"vap-b-{suffix}"
    pods = [f"plugin-on-a-{suffix}", f"plugin-pending-{suffix}"]
    try:
        _create_node(cluster, node_a)
        _create_node(cluster, node_b)
        on_a, pending = _create_pod(cluster, pods[0], node_a), _create_pod(cluster, pods[1], None)
        state = Setup(cluster, node_a, node_b, _token(cluster, on_a), _token(cluster, None), _token(cluster, pending))
        _wait_until_enforced(state)
        yield state
    finally:
        for pod in pods:
            _ignore_missing(lambda p=pod: cluster.core.delete_namespaced_pod(p, NAMESPACE, grace_period_seconds=0))
        for node in (node_a, node_b):
            _ignore_missing(lambda n=node: cluster.core.delete_node(n))
        for obj in reversed(objects):
            api = dynamic.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
            namespace = obj["metadata"].get("namespace")
            _ignore_missing(lambda a=api, o=obj, ns=namespace: a.delete(name=o["metadata"]["name"], namespace=ns))


def _ignore_missing(call: Any) -> None:
    try:
        call()
    except k8s.ApiException as err:
        if err.status != 404:
            raise
    except Exception as err:  # the dynamic client raises its own NotFoundError
        if getattr(err, "status", None) != 404:
            raise


def test_the_bound_token_carries_node_a(setup: Setup) -> None:
    """The API server put node A's name into the pod-bound token; the unbound token has none."""
    review = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
    status, body = request(setup.cluster, setup.token, "POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews",
                           review)  # fmt: skip
    assert status == 201, body
    user = body["status"]["userInfo"]
    assert user["username"] == f"system:serviceaccount:{NAMESPACE}:{SERVICE_ACCOUNT}"
    assert user["extra"][NODE_NAME_KEY] == [setup.node_a]
    status, body = request(setup.cluster, setup.unbound_token, "POST",
                           "/apis/authentication.k8s.io/v1/selfsubjectreviews", review)  # fmt: skip
    assert status == 201 and NODE_NAME_KEY not in (body["status"]["userInfo"].get("extra") or {})


def test_the_policy_type_checks_cleanly(setup: Setup) -> None:
    policy = k8s.AdmissionregistrationV1Api(setup.cluster.api).read_validating_admission_policy(POLICY)
    checking = policy.status.type_checking
    assert checking is None or not checking.expression_warnings, checking


def test_the_plugin_may_write_its_own_nodes_neuron_contig_annotations(setup: Setup) -> None:
    status, message = patch_node(
        setup,
        setup.node_a,
        {"metadata": {"annotations": {"neuron-contig.io/free-devices": "0-3", "neuron-contig.io/serving": "true"}}},
    )
    assert status == 200, message
    assert annotations(setup.cluster, setup.node_a)["neuron-contig.io/free-devices"] == "0-3"
    status, message = patch_node(setup, setup.node_a, {"metadata": {"annotations": {"neuron-contig.io/serving": None}}})
    assert status == 200, message
    after = annotations(setup.cluster, setup.node_a)
    assert "neuron-contig.io/serving" not in after and after["example.com/owner"] == "ops"
    # Reading its node (the instance-type label) is allowed too.
    status, body = request(setup.cluster, setup.token, "GET", f"/api/v1/nodes/{setup.node_a}")
    assert status == 200 and body["metadata"]["name"] == setup.node_a


def test_another_node_is_refused(setup: Setup) -> None:
    before = annotations(setup.cluster, setup.node_b)
    status, message = patch_node(
        setup, setup.node_b, {"metadata": {"annotations": {"neuron-contig.io/devices": "9" * 5000}}}
    )
    assert status == 403, message
    assert POLICY in message and f"only its own node {setup.node_a}, not {setup.node_b}" in message
    assert annotations(setup.cluster, setup.node_b) == before


@pytest.mark.parametrize(
    ("patch", "complaint"),
    [
        ({"metadata": {"labels": {"team": "payments"}}}, "labels"),
        ({"metadata": {"labels": {"node-role.kubernetes.io/control-plane": ""}}}, "labels"),
        ({"spec": {"taints": None}}, "spec"),
        ({"spec": {"taints": [{"key": "evil", "effect": "NoExecute"}]}}, "spec"),
        ({"spec": {"unschedulable": True}}, "spec"),
        ({"metadata": {"annotations": {"example.com/owner": "me"}}}, "only neuron-contig.io/ annotations"),
        ({"metadata": {"annotations": {"example.com/owner": None}}}, "only neuron-contig.io/ annotations"),
        ({"metadata": {"annotations": {"neuron-contig.io.evil.com/x": "1"}}}, "only neuron-contig.io/ annotations"),
        ({"metadata": {"finalizers": ["example.com/hold"]}}, "finalizers"),
    ],
    ids=["label", "control-plane-label", "remove-taints", "add-taint", "cordon", "other-annotation",
         "remove-other-annotation", "lookalike-prefix", "finalizer"],
)  # fmt: skip
def test_on_its_own_node_only_neuron_contig_annotations_change(
    setup: Setup, patch: dict[str, Any], complaint: str
) -> None:
    before = setup.cluster.core.read_node(setup.node_a)
    status, message = patch_node(setup, setup.node_a, patch)
    assert status == 403, message
    assert POLICY in message and complaint in message, message
    after = setup.cluster.core.read_node(setup.node_a)
    assert after.metadata.labels == before.metadata.labels and after.spec.taints == before.spec.taints


@pytest.mark.parametrize("which", ["unbound", "pod-not-on-a-node"])
def test_a_token_without_a_node_is_refused(setup: Setup, which: str) -> None:
    token = setup.unbound_token if which == "unbound" else setup.pending_token
    patch = {"metadata": {"annotations": {"neuron-contig.io/free-devices": "0-11"}}}
    status, message = patch_node(setup, setup.node_a, patch, token=token)
    assert status == 403 and "carries no node name" in message, message


def test_rbac_gives_the_plugin_nothing_else(setup: Setup) -> None:
    """The same token, outside the policy's reach: RBAC refuses pod reads, node lists, deletes and Secrets."""
    for method, path, body in [
        ("GET", f"/api/v1/namespaces/{NAMESPACE}/pods", None),
        ("GET", "/api/v1/pods", None),
        ("GET", "/api/v1/nodes", None),
        ("DELETE", f"/api/v1/nodes/{setup.node_b}", None),
        ("GET", f"/api/v1/namespaces/{NAMESPACE}/secrets", None),
    ]:
        status, reply = request(setup.cluster, setup.token, method, path, body)
        assert status == 403 and "forbidden" in str(reply.get("message", "")).lower(), (method, path, status)


def test_other_users_are_not_affected(setup: Setup) -> None:
    """The policy matches the plugin's service account only: the cluster admin still labels node A."""
    setup.cluster.core.patch_node(setup.node_a, {"metadata": {"labels": {"admin-was-here": "yes"}}})
    assert setup.cluster.core.read_node(setup.node_a).metadata.labels["admin-was-here"] == "yes"


# ---- the NeuronDevicesHealthy condition, through the status subresource ---------------------------------------


def test_the_plugin_may_set_its_own_nodes_condition_and_nothing_else_changes(setup: Setup) -> None:
    before = setup.cluster.core.read_node(setup.node_a)
    status, message = patch_status(setup, setup.node_a, condition("False"))
    assert status == 200, message
    after = conditions(setup.cluster, setup.node_a)
    assert after[CONDITION]["status"] == "False" and after[CONDITION]["reason"] == "NeuronHardwareError"
    assert after["Ready"]["status"] == "True" and after["MemoryPressure"]["status"] == "False"  # kubelet's, kept
    status, message = patch_status(
        setup, setup.node_a, condition("True", reason="AllDevicesHealthy", message="all 12 Neuron devices are healthy")
    )
    assert status == 200, message
    node = setup.cluster.core.read_node(setup.node_a)
    assert conditions(setup.cluster, setup.node_a)[CONDITION]["status"] == "True"
    assert node.status.capacity == before.status.capacity and node.status.addresses == before.status.addresses
    assert node.metadata.labels == before.metadata.labels


def test_another_nodes_condition_is_refused(setup: Setup) -> None:
    status, message = patch_status(setup, setup.node_b, condition("False"))
    assert status == 403, message
    assert POLICY in message and f"only its own node {setup.node_a}, not {setup.node_b}" in message
    assert CONDITION not in conditions(setup.cluster, setup.node_b)


@pytest.mark.parametrize(
    ("patch", "complaint"),
    [
        ({"status": {"conditions": [{"type": "Ready", "status": "False", "reason": "Evil"}]}}, "condition"),
        ({"status": {"conditions": [{"type": "Ready", "$patch": "delete"}]}}, "condition"),
        ({"status": {"conditions": [{"type": "NeuronHealth", "status": "True", "reason": "NeuronHasError_DMA_ERROR"}]}},
         "condition"),
        ({"status": {"conditions": [{"type": "MemoryPressure", "status": "True", "reason": "Evil"}]}}, "condition"),
        ({"status": {"capacity": {"aws.amazon.com/neuron": "99"}}}, "status"),
        ({"status": {"allocatable": {"aws.amazon.com/neuron": "99"}}}, "status"),
        ({"status": {"addresses": [{"type": "InternalIP", "address": "10.9.9.9"}]}}, "status"),
        ({"status": {"phase": "Terminated"}}, "status"),
        ({"metadata": {"labels": {"team": "payments"}}}, "labels"),
        ({"metadata": {"annotations": {"example.com/owner": "me"}}}, "only neuron-contig.io/ annotations"),
    ],
    ids=["ready", "delete-ready", "aws-npd-condition", "memory-pressure", "capacity", "allocatable", "addresses",
         "phase", "label", "other-annotation"],
)  # fmt: skip
def test_through_the_status_only_the_one_condition_changes(setup: Setup, patch: dict[str, Any], complaint: str) -> None:
    before = setup.cluster.core.read_node(setup.node_a)
    status, message = patch_status(setup, setup.node_a, patch)
    assert status == 403, message
    assert POLICY in message and complaint in message, message
    after = setup.cluster.core.read_node(setup.node_a)
    assert after.status.capacity == before.status.capacity and after.status.allocatable == before.status.allocatable
    assert after.status.addresses == before.status.addresses and after.metadata.labels == before.metadata.labels
    assert {c.type: c.status for c in after.status.conditions} == {c.type: c.status for c in before.status.conditions}


@pytest.mark.parametrize(
    "fields",
    [{"status": "Maybe"}, {"message": "x" * 1025}, {"reason": "R" * 129}],
    ids=["status-word", "long-message", "long-reason"],
)
def test_the_condition_itself_is_bounded(setup: Setup, fields: dict[str, str]) -> None:
    patch = condition(**{"status": "False", **fields})
    status, message = patch_status(setup, setup.node_a, patch)
    assert status in (403, 422) and (POLICY in message or "Unsupported value" in message), message


def test_a_token_without_a_node_cannot_set_the_condition(setup: Setup) -> None:
    status, message = patch_status(setup, setup.node_a, condition("False"), token=setup.unbound_token)
    assert status == 403 and "carries no node name" in message, message


def test_the_policy_pins_every_status_field_the_api_server_knows(setup: Setup) -> None:
    """CEL cannot compare "all but conditions", so the policy names NodeStatus's fields one by one. The API
    server's own OpenAPI schema lists them: a field a newer Kubernetes adds fails here until it is pinned."""
    status, body = request(setup.cluster, ADMIN_TOKEN, "GET", "/openapi/v3/api/v1")
    assert status == 200
    fields = set(body["components"]["schemas"]["io.k8s.api.core.v1.NodeStatus"]["properties"])
    policy = next(o for o in manifest_objects() if o["kind"] == "ValidatingAdmissionPolicy")
    text = " ".join(v["expression"] for v in policy["spec"]["validations"])
    assert "conditions" in fields and len(fields) >= 14
    for name in fields - {"conditions"}:
        assert f"object.status.?{name} == oldObject.status.?{name}" in text, name
