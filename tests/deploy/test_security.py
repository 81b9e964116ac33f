"""Security and operability properties read from the manifests themselves (the kustomize build of deploy/).

Least privilege is checked by computing what each service account may do from the rendered RBAC,
not by trusting names: the extender cannot patch nodes, the plugin cannot bind pods, nobody reads Secrets.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
import yaml

from neuronalloc import CATALOG
from tests.deploy.tools import DEPLOY, Obj, find, helm, kustomize

PLUGIN, EXTENDER, SCHEDULER = "neuron-contig-device-plugin", "neuron-scheduler-extender", "neuron-contig-scheduler"
# The only host paths the plugin may mount, each with the reason written beside it in the DaemonSet.
PLUGIN_HOST_PATHS = {
    "/var/lib/kubelet/device-plugins": False,  # path -> read-only?
    "/var/lib/kubelet/pod-resources": True,
    "/dev": True,
    "/opt/aws/neuron": True,
}


@pytest.fixture(scope="module", params=["kustomize", "helm"])
def objs(request: pytest.FixtureRequest) -> list[Obj]:
    return kustomize(".") if request.param == "kustomize" else helm()


def pod_spec(objs: list[Obj], kind: str, name: str) -> Obj:
    return find(objs, kind, name)["spec"]["template"]["spec"]  # type: ignore[no-any-return]


def workloads(objs: list[Obj]) -> Iterator[tuple[str, Obj]]:
    for obj in objs:
        if obj["kind"] in ("Deployment", "DaemonSet"):
            yield obj["metadata"]["name"], obj["spec"]["template"]["spec"]


# ---- RBAC ---------------------------------------------------------------------------------------------


def permissions(objs: list[Obj], service_account: str) -> set[tuple[str, str, str]]:
    """(apiGroup, resource, verb) the service account gets from roles defined in these manifests."""
    roles = {(o["kind"], o["metadata"]["name"]): o for o in objs if o["kind"] in ("Role", "ClusterRole")}
    granted: set[tuple[str, str, str]] = set()
    for binding in (o for o in objs if o["kind"] in ("RoleBinding", "ClusterRoleBinding")):
        if not any(s["kind"] == "ServiceAccount" and s["name"] == service_account for s in binding["subjects"]):
            continue
        role = roles.get((binding["roleRef"]["kind"], binding["roleRef"]["name"]))
        for rule in (role or {}).get("rules", []):
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    for verb in rule["verbs"]:
                        granted.add((group, resource, verb))
    return granted


def bound_cluster_roles(objs: list[Obj], service_account: str) -> set[str]:
    return {
        b["roleRef"]["name"]
        for b in objs
        if b["kind"] in ("RoleBinding", "ClusterRoleBinding")
        and any(s["name"] == service_account for s in b["subjects"])
    }


def test_plugin_rbac_is_exactly_node_patch_and_pod_reads(objs: list[Obj]) -> None:
    assert permissions(objs, PLUGIN) == {
        ("", "nodes", "get"), ("", "nodes", "patch"),
        ("", "pods", "get"), ("", "pods", "list"), ("", "pods", "watch"),
    }


def test_extender_rbac_reads_and_binds_but_cannot_patch(objs: list[Obj]) -> None:
    granted = permissions(objs, EXTENDER)
    assert granted == {
        ("", "nodes", "get"), ("", "nodes", "list"), ("", "nodes", "watch"),
        ("", "pods", "get"), ("", "pods", "list"), ("", "pods", "watch"),
        ("", "pods/binding", "create"),
    }
    assert ("", "nodes", "patch") not in granted
    assert ("", "pods/binding", "create") not in permissions(objs, PLUGIN)


def test_scheduler_gets_the_standard_scheduler_roles_and_its_own_lease(objs: list[Obj]) -> None:
    assert bound_cluster_roles(objs, SCHEDULER) == {
        "system:kube-scheduler", "system:volume-scheduler", "extension-apiserver-authentication-reader",
        "neuron-contig-scheduler-leader-election",
    }
    reader = find(objs, "RoleBinding", "neuron-contig-scheduler-extension-apiserver-authentication-reader")
    assert reader["metadata"]["namespace"] == "kube-system" and reader["roleRef"]["kind"] == "Role"
    lease = find(objs, "Role", "neuron-contig-scheduler-leader-election")
    named = [r for r in lease["rules"] if "resourceNames" in r]
    assert named == [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                      "resourceNames": [SCHEDULER], "verbs": ["get", "update"]}]
    config = yaml.safe_load((DEPLOY / "scheduler" / "kube-scheduler-config.yaml").read_text())
    assert config["leaderElection"]["resourceName"] == SCHEDULER


def test_no_wildcards_and_no_secrets(objs: list[Obj]) -> None:
    for role in (o for o in objs if o["kind"] in ("Role", "ClusterRole")):
        for rule in role["rules"]:
            assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"], role["metadata"]["name"]
            assert "secrets" not in rule["resources"], role["metadata"]["name"]


# ---- pods ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind_name", [("Deployment", EXTENDER), ("Deployment", SCHEDULER)])
def test_extender_and_scheduler_are_non_root_read_only_no_caps(objs: list[Obj], kind_name: tuple[str, str]) -> None:
    spec = pod_spec(objs, *kind_name)
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] != 0
    for container in spec["containers"]:
        ctx = container["securityContext"]
        assert ctx["runAsNonRoot"] is True
        assert ctx["readOnlyRootFilesystem"] is True
        assert ctx["allowPrivilegeEscalation"] is False
        assert ctx["capabilities"] == {"drop": ["ALL"]}
    assert not any(v.get("hostPath") for v in spec.get("volumes", []))


def test_plugin_least_privilege(objs: list[Obj]) -> None:
    spec = pod_spec(objs, "DaemonSet", PLUGIN)
    for host_ns in ("hostNetwork", "hostPID", "hostIPC"):
        assert not spec.get(host_ns), host_ns
    (container,) = spec["containers"]
    ctx = container["securityContext"]
    assert ctx["privileged"] is False and ctx["allowPrivilegeEscalation"] is False
    assert ctx["readOnlyRootFilesystem"] is True
    assert ctx["capabilities"] == {"drop": ["ALL"]}, "no capability is added"
    host_paths = {v["name"]: v["hostPath"]["path"] for v in spec["volumes"] if "hostPath" in v}
    assert set(host_paths.values()) == set(PLUGIN_HOST_PATHS)
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    for name, path in host_paths.items():
        assert mounts[name]["mountPath"] == path
        assert bool(mounts[name].get("readOnly")) is PLUGIN_HOST_PATHS[path], path


def test_every_plugin_host_path_mount_is_justified_in_a_comment() -> None:
    """Each volumeMount of the DaemonSet source has a comment right above it saying why."""
    for source in (DEPLOY / "plugin" / "daemonset.yaml", DEPLOY / "helm/neuron-contig/templates/plugin-daemonset.yaml"):
        lines = source.read_text().splitlines()
        start = next(i for i, line in enumerate(lines) if line.strip() == "volumeMounts:")
        end = next(i for i, line in enumerate(lines) if line.strip() == "volumes:")
        for i in range(start + 1, end):
            if re.match(r"\s*- name: ", lines[i]):
                above = lines[i - 1].strip()
                assert above.startswith("#") or above.startswith("{{- with"), f"{source.name}:{i + 1} unjustified"


def test_plugin_scheduling_and_identity(objs: list[Obj]) -> None:
    spec = pod_spec(objs, "DaemonSet", PLUGIN)
    assert spec["priorityClassName"] == "system-node-critical"
    term = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]
    (expression,) = term["matchExpressions"]
    assert expression["key"] == "node.kubernetes.io/instance-type" and expression["operator"] == "In"
    assert sorted(expression["values"]) == sorted(CATALOG), "every catalog instance type, no other"
    assert {"key": "aws.amazon.com/neuron", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    env = {e["name"]: e for e in spec["containers"][0]["env"]}
    assert spec["enableServiceLinks"] is False, "service links would shadow the flags' env vars"
    assert env["NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert spec["containers"][0]["ports"] == [{"name": "metrics", "containerPort": 9410, "protocol": "TCP"}]


def test_every_container_has_probes_requests_and_limits(objs: list[Obj]) -> None:
    for name, spec in workloads(objs):
        for container in spec["containers"]:
            assert "livenessProbe" in container, name
            assert "readinessProbe" in container or "startupProbe" in container, name
            resources = container["resources"]
            assert {"cpu", "memory"} <= set(resources["requests"]), name
            assert {"cpu", "memory"} <= set(resources["limits"]), name
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name


def test_extender_availability(objs: list[Obj]) -> None:
    deployment = find(objs, "Deployment", EXTENDER)
    assert deployment["spec"]["replicas"] >= 2
    assert deployment["spec"]["template"]["spec"]["enableServiceLinks"] is False
    pdb = find(objs, "PodDisruptionBudget", EXTENDER)
    assert pdb["spec"]["minAvailable"] >= 1
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    service = find(objs, "Service", EXTENDER)
    assert service["spec"]["sessionAffinity"] == "ClientIP"
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["ports"][0]["port"] == 8888
    probes = deployment["spec"]["template"]["spec"]["containers"][0]
    assert probes["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert probes["livenessProbe"]["httpGet"]["path"] == "/healthz"


def test_scheduler_deployment_uses_the_config_and_elects_a_leader(objs: list[Obj]) -> None:
    spec = pod_spec(objs, "Deployment", SCHEDULER)
    assert spec["serviceAccountName"] == SCHEDULER
    assert find(objs, "Deployment", SCHEDULER)["spec"]["replicas"] >= 2
    configmap = find(objs, "ConfigMap", "neuron-contig-scheduler-config")
    config = yaml.safe_load(configmap["data"]["kube-scheduler-config.yaml"])
    assert config["leaderElection"]["leaderElect"] is True
    assert config["profiles"][0]["schedulerName"] == SCHEDULER
    url = config["extenders"][0]["urlPrefix"]
    service = find(objs, "Service", EXTENDER)
    assert url == f"http://{EXTENDER}.{service['metadata']['namespace']}.svc:{service['spec']['ports'][0]['port']}"
