"""Security and operability properties read from the manifests themselves (the kustomize build of deploy/ and
the chart's renderings).

Least privilege is checked by computing what each service account may do from the rendered RBAC, and who may
reach which port from the rendered NetworkPolicies (tests/deploy/netpol.py), not by trusting names: the
extender cannot patch nodes, the plugin reads and patches nodes only, nobody reads Secrets, nothing but
kube-scheduler and the extender's own replicas reaches /bind. What the API server enforces at run time (the
admission policy, Pod Security admission, server-side validation) is shown on a real one in tests/cluster/.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from neuronalloc import CATALOG
from tests.deploy.netpol import Pod, admits
from tests.deploy.tools import CHART, DEPLOY, Obj, find, helm, kustomize
from tests.deploy.variants import CHART_VARIANTS

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
    """(apiGroup, resource, verb) the service account gets from roles defined in these manifests, whether or
    not the rule is narrowed to some names (named_permissions tells)."""
    return {(group, resource, verb) for group, resource, verb, _ in named_permissions(objs, service_account)}


def named_permissions(objs: list[Obj], service_account: str) -> set[tuple[str, str, str, str]]:
    """(apiGroup, resource, verb, resourceName or "*") the service account gets, with the role's namespace
    checked against the binding's (a RoleBinding grants a Role in its own namespace only)."""
    roles = {
        (o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"]): o
        for o in objs if o["kind"] in ("Role", "ClusterRole")
    }  # fmt: skip
    granted: set[tuple[str, str, str, str]] = set()
    for binding in (o for o in objs if o["kind"] in ("RoleBinding", "ClusterRoleBinding")):
        if not any(s["kind"] == "ServiceAccount" and s["name"] == service_account for s in binding["subjects"]):
            continue
        ref = binding["roleRef"]
        namespace = binding["metadata"].get("namespace", "") if ref["kind"] == "Role" else ""
        role = roles.get((ref["kind"], namespace, ref["name"]))
        for rule in (role or {}).get("rules", []):
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    for verb in rule["verbs"]:
                        for name in rule.get("resourceNames") or ["*"]:
                            granted.add((group, resource, verb, name))
    return granted


def bound_cluster_roles(objs: list[Obj], service_account: str) -> set[str]:
    return {
        b["roleRef"]["name"]
        for b in objs
        if b["kind"] in ("RoleBinding", "ClusterRoleBinding")
        and any(s["name"] == service_account for s in b["subjects"])
    }


def test_plugin_rbac_is_exactly_get_and_patch_nodes(objs: list[Obj]) -> None:
    """The plugin reads its node, patches its annotations and its NeuronDevicesHealthy condition (status
    subresource); it reads no pods (kubelet's PodResources tells it who holds what) and lists, watches, creates
    or deletes nothing."""
    assert permissions(objs, PLUGIN) == {("", "nodes", "get"), ("", "nodes", "patch"), ("", "nodes/status", "patch")}


def test_extender_rbac_reads_binds_and_holds_only_its_own_lease(objs: list[Obj]) -> None:
    granted = named_permissions(objs, EXTENDER)
    lease = "neuron-scheduler-extender"
    assert granted == {
        ("", "nodes", "get", "*"), ("", "nodes", "list", "*"), ("", "nodes", "watch", "*"),
        ("", "pods", "get", "*"), ("", "pods", "list", "*"), ("", "pods", "watch", "*"),
        ("", "pods/binding", "create", "*"),
        # create cannot be narrowed by name (the name is not known before the object exists).
        ("coordination.k8s.io", "leases", "create", "*"),
        ("coordination.k8s.io", "leases", "get", lease), ("coordination.k8s.io", "leases", "update", lease),
    }  # fmt: skip
    assert ("", "nodes", "patch") not in permissions(objs, EXTENDER)
    assert ("", "pods/binding", "create") not in permissions(objs, PLUGIN)
    role = find(objs, "Role", "neuron-scheduler-extender-lease")
    assert role["metadata"]["namespace"] == "kube-system", "the lease lives in the release namespace only"
    env = {e["name"]: e for e in pod_spec(objs, "Deployment", EXTENDER)["containers"][0]["env"]}
    assert env["LEASE_NAME"]["value"] == lease
    assert env["LEASE_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}


def test_scheduler_gets_the_standard_scheduler_roles_and_its_own_lease(objs: list[Obj]) -> None:
    assert bound_cluster_roles(objs, SCHEDULER) == {
        "system:kube-scheduler",
        "system:volume-scheduler",
        "extension-apiserver-authentication-reader",
        "neuron-contig-scheduler-leader-election",
    }
    reader = find(objs, "RoleBinding", "neuron-contig-scheduler-extension-apiserver-authentication-reader")
    assert reader["metadata"]["namespace"] == "kube-system" and reader["roleRef"]["kind"] == "Role"
    lease = find(objs, "Role", "neuron-contig-scheduler-leader-election")
    named = [r for r in lease["rules"] if "resourceNames" in r]
    assert named == [
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "resourceNames": [SCHEDULER],
            "verbs": ["get", "update"],
        }
    ]
    config = yaml.safe_load((DEPLOY / "scheduler" / "kube-scheduler-config.yaml").read_text())
    assert config["leaderElection"]["resourceName"] == SCHEDULER


# ---- the admission policy on node writes (its behaviour: tests/cluster/test_admission_policy.py) -----------


def test_plugin_node_writes_policy_is_bound_and_names_the_plugin(objs: list[Obj]) -> None:
    policy = find(objs, "ValidatingAdmissionPolicy", "neuron-contig-device-plugin-node-writes")
    binding = find(objs, "ValidatingAdmissionPolicyBinding", "neuron-contig-device-plugin-node-writes")
    assert binding["spec"] == {"policyName": policy["metadata"]["name"], "validationActions": ["Deny"]}
    assert "namespace" not in policy["metadata"] and "namespace" not in binding["metadata"], "cluster-scoped"
    spec = policy["spec"]
    assert spec["failurePolicy"] == "Fail"
    assert spec["matchConstraints"]["resourceRules"] == [
        {"apiGroups": [""], "apiVersions": ["v1"], "operations": ["UPDATE"], "resources": ["nodes", "nodes/status"]}
    ]
    (condition,) = spec["matchConditions"]
    assert f'"system:serviceaccount:kube-system:{PLUGIN}"' in condition["expression"]
    assert find(objs, "ServiceAccount", PLUGIN)["metadata"]["namespace"] == "kube-system"
    text = " ".join(v["expression"] for v in spec["validations"])
    for needle in ('"authentication.kubernetes.io/node-name"', '"neuron-contig.io/"', "labels", "spec",
                   '"NeuronDevicesHealthy"', "status.?capacity", "status.?addresses"):  # fmt: skip
        assert needle in text + " ".join(v["expression"] for v in spec["variables"]), needle


def test_policy_follows_the_release_namespace() -> None:
    policy = find(helm(namespace="neuron"), "ValidatingAdmissionPolicy", "neuron-contig-device-plugin-node-writes")
    assert (
        '"system:serviceaccount:neuron:neuron-contig-device-plugin"'
        in policy["spec"]["matchConditions"][0]["expression"]
    )


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
    # One capability only: SYSLOG, for the default hardware-error watch (syslog(2) on the kernel ring buffer).
    assert ctx["capabilities"] == {"drop": ["ALL"], "add": ["SYSLOG"]}
    assert {e["name"]: e.get("value") for e in container["env"]}["HW_ERROR_LOG"] == "ringbuffer"
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
    expression, mode = term["matchExpressions"]
    assert mode == {"key": "neuron-contig.io/mode", "operator": "NotIn", "values": ["dra"]}, "never beside DRA"
    assert expression["key"] == "node.kubernetes.io/instance-type" and expression["operator"] == "In"
    extra = set(expression["values"]) - set(CATALOG)
    assert set(CATALOG) <= set(expression["values"]), "every catalog instance type"
    assert all(t.startswith("ml.") and t.removeprefix("ml.") in CATALOG for t in extra), "and only their ml. twins"
    assert {"key": "aws.amazon.com/neuron", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    env = {e["name"]: e for e in spec["containers"][0]["env"]}
    assert spec["enableServiceLinks"] is False, "service links would shadow the flags' env vars"
    assert env["NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert spec["containers"][0]["ports"] == [{"name": "metrics", "containerPort": 9410, "protocol": "TCP"}]


def test_plugin_advertises_its_pod_ip_and_is_ready_only_while_serving(objs: list[Obj]) -> None:
    """The extender probes GET /readyz at <pod IP>:<metrics port> before binding; kubelet's readiness probe asks
    the same, while liveness stays on /healthz (a kubelet restart makes the plugin unready, not dead)."""
    (container,) = pod_spec(objs, "DaemonSet", PLUGIN)["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["ADVERTISE_ADDRESS"]["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}


@pytest.mark.parametrize("variant", sorted(CHART_VARIANTS))
def test_no_rendering_mounts_a_path_twice(variant: str) -> None:
    """Duplicate mount paths or volume names make the API server refuse the pod (plugin.hwErrorLog=/dev/kmsg once
    mounted /dev a second time)."""
    for name, spec in workloads(helm(*CHART_VARIANTS[variant])):
        volumes = [v["name"] for v in spec.get("volumes", [])]
        assert len(volumes) == len(set(volumes)), f"{name}: {volumes}"
        for container in spec["containers"]:
            paths = [m["mountPath"] for m in container.get("volumeMounts", [])]
            assert len(paths) == len(set(paths)), f"{name}: {paths}"
            assert {m["name"] for m in container.get("volumeMounts", [])} <= set(volumes), name


def test_hw_error_log_file_mounts_that_file_alone() -> None:
    spec = pod_spec(helm("plugin.hwErrorLog=/var/log/messages"), "DaemonSet", PLUGIN)
    (container,) = spec["containers"]
    host_paths = {v["name"]: v["hostPath"] for v in spec["volumes"] if "hostPath" in v}
    assert host_paths["hw-error-log"] == {"path": "/var/log/messages", "type": "File"}
    assert set(p["path"] for p in host_paths.values()) == set(PLUGIN_HOST_PATHS) | {"/var/log/messages"}
    mount = next(m for m in container["volumeMounts"] if m["name"] == "hw-error-log")
    assert mount == {"name": "hw-error-log", "mountPath": "/var/log/messages", "readOnly": True}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["HW_ERROR_LOG"] == "/var/log/messages"
    assert container["securityContext"]["privileged"] is False
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}, "a file needs no capability"


@pytest.mark.parametrize("value", ["ringbuffer", "/dev/kmsg"])
def test_hw_error_log_ringbuffer_adds_syslog_alone_and_no_mount(value: str) -> None:
    """The default, and /dev/kmsg kept for existing values: the kernel ring buffer through syslog(2), with
    CAP_SYSLOG added back alone. The container is never privileged (a privileged container was the only way to
    open /dev/kmsg: the device cgroup admits no container to it)."""
    default = pod_spec(helm(), "DaemonSet", PLUGIN)
    spec = pod_spec(helm(f"plugin.hwErrorLog={value}"), "DaemonSet", PLUGIN)
    (container,) = spec["containers"]
    assert spec["volumes"] == default["volumes"]
    assert container["volumeMounts"] == default["containers"][0]["volumeMounts"]
    assert {e["name"]: e.get("value") for e in container["env"]}["HW_ERROR_LOG"] == "ringbuffer"
    ctx = container["securityContext"]
    assert ctx["privileged"] is False and ctx["allowPrivilegeEscalation"] is False
    assert ctx["capabilities"] == {"drop": ["ALL"], "add": ["SYSLOG"]}
    assert ctx["readOnlyRootFilesystem"] is True
    source = (CHART / "templates" / "plugin-daemonset.yaml").read_text()
    assert "dmesg_restrict" in source and "/dev/kmsg" in (CHART / "values.yaml").read_text()


def test_hw_error_log_off_says_so_to_the_binary_and_adds_no_capability() -> None:
    """The binary's default is the ring buffer, so "" must reach it as an explicit empty value."""
    (container,) = pod_spec(helm("plugin.hwErrorLog="), "DaemonSet", PLUGIN)["containers"]
    assert {e["name"]: e.get("value") for e in container["env"]}["HW_ERROR_LOG"] == ""
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}


def test_hw_error_trust_reaches_the_binary_only_when_not_the_default() -> None:
    (default,) = pod_spec(helm(), "DaemonSet", PLUGIN)["containers"]
    assert "HW_ERROR_TRUST" not in {e["name"] for e in default["env"]}
    (container,) = pod_spec(helm("plugin.hwErrorTrust=allocated"), "DaemonSet", PLUGIN)["containers"]
    assert {e["name"]: e.get("value") for e in container["env"]}["HW_ERROR_TRUST"] == "allocated"


def test_no_rendering_makes_the_plugin_privileged() -> None:
    for name, sets in CHART_VARIANTS.items():
        objs = helm(*sets)
        daemonsets = [o for o in objs if o["kind"] == "DaemonSet"]  # the device plugin, the DRA driver or both
        assert daemonsets, name
        for container in (c for ds in daemonsets for c in ds["spec"]["template"]["spec"]["containers"]):
            ctx = container["securityContext"]
            assert ctx["privileged"] is False and ctx["allowPrivilegeEscalation"] is False, name
            assert set(ctx["capabilities"].get("add", [])) <= {"SYSLOG"}, name


POD_SECURITY = {
    DEPLOY / "plugin" / "daemonset.yaml": "privileged",
    DEPLOY / "extender" / "deployment.yaml": "restricted",
    DEPLOY / "scheduler" / "deployment.yaml": "restricted",
    CHART / "templates" / "plugin-daemonset.yaml": "privileged",
    CHART / "templates" / "extender-deployment.yaml": "restricted",
    CHART / "templates" / "scheduler-deployment.yaml": "restricted",
}


@pytest.mark.parametrize("source", sorted(POD_SECURITY), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_each_workload_states_its_pod_security_level(source: Path) -> None:
    """The level each component needs is written beside it (tests/cluster checks it with Pod Security
    admission itself)."""
    match = re.search(r'# Pod Security: (?:needs the namespace\'s |passes )"(\w+)"', source.read_text())
    assert match, f"{source.name}: no Pod Security comment"
    assert match.group(1) == POD_SECURITY[source]


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
    assert [(p["name"], p["port"]) for p in service["spec"]["ports"]] == [("https", 8888), ("metrics", 9411)]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    # kubelet presents no client certificate: the probes go to the plain-HTTP metrics port.
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"https": 8888, "metrics": 9411}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert (env["PORT"], env["METRICS_PORT"]) == ("8888", "9411")
    assert env["SCHEDULER_NAME"] == SCHEDULER


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
    assert url == f"https://{EXTENDER}.{service['metadata']['namespace']}.svc:{service['spec']['ports'][0]['port']}"


# ---- mutual TLS between kube-scheduler and the extender ----------------------------------------------------


def mounted_file(spec: Obj, container: Obj, path: str) -> tuple[str, str]:
    """(Secret name, key) behind a file path in a container, through its volumeMounts."""
    for mount in container.get("volumeMounts", []):
        prefix = mount["mountPath"].rstrip("/") + "/"
        if path.startswith(prefix):
            volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
            assert "secret" in volume, f"{path} is not from a Secret"
            return volume["secret"]["secretName"], path[len(prefix) :]
    raise AssertionError(f"{path} is not under any mount")


def issuing_chain(objs: list[Obj], secret: str) -> list[Obj]:
    """The cert-manager objects behind a Secret: its Certificate, that Certificate's Issuer, and on up to a
    self-signed Issuer."""
    certificates = {o["spec"]["secretName"]: o for o in objs if o["kind"] == "Certificate"}
    issuers = {o["metadata"]["name"]: o for o in objs if o["kind"] == "Issuer"}
    chain = []
    while True:
        certificate = certificates[secret]
        issuer = issuers[certificate["spec"]["issuerRef"]["name"]]
        assert certificate["spec"]["issuerRef"] == {"group": "cert-manager.io", "kind": "Issuer",
                                                    "name": issuer["metadata"]["name"]}  # fmt: skip
        chain += [certificate, issuer]
        if "selfSigned" in issuer["spec"]:
            return chain
        secret = issuer["spec"]["ca"]["secretName"]


def test_mutual_tls_is_wired_end_to_end(objs: list[Obj]) -> None:
    """The scheduler dials https:// with a client certificate; the extender serves that name and requires a
    client certificate; both leaves come from one CA of this installation's own; nobody mounts the CA's key."""
    configmap = find(objs, "ConfigMap", "neuron-contig-scheduler-config")
    config = yaml.safe_load(configmap["data"]["kube-scheduler-config.yaml"])
    (extender_cfg,) = config["extenders"]
    assert extender_cfg["urlPrefix"].startswith("https://") and extender_cfg["enableHTTPS"] is True
    host = extender_cfg["urlPrefix"].removeprefix("https://").split(":")[0]
    tls_config = extender_cfg["tlsConfig"]
    assert set(tls_config) == {"certFile", "keyFile", "caFile"}, "no insecure, no serverName override"

    scheduler_spec = pod_spec(objs, "Deployment", SCHEDULER)
    (scheduler,) = scheduler_spec["containers"]
    client = {k: mounted_file(scheduler_spec, scheduler, tls_config[k]) for k in ("certFile", "keyFile", "caFile")}
    assert client == {"certFile": (client["certFile"][0], "tls.crt"), "keyFile": (client["certFile"][0], "tls.key"),
                      "caFile": (client["certFile"][0], "ca.crt")}  # fmt: skip

    extender_spec = pod_spec(objs, "Deployment", EXTENDER)
    (extender,) = extender_spec["containers"]
    env = {e["name"]: e.get("value") for e in extender["env"]}
    files = ("TLS_CERT_FILE", "TLS_KEY_FILE", "TLS_CLIENT_CA_FILE")
    server = {k: mounted_file(extender_spec, extender, env[k]) for k in files}
    secret = server["TLS_CERT_FILE"][0]
    assert server == {"TLS_CERT_FILE": (secret, "tls.crt"), "TLS_KEY_FILE": (secret, "tls.key"),
                      "TLS_CLIENT_CA_FILE": (secret, "ca.crt")}  # fmt: skip

    server_chain, client_chain = issuing_chain(objs, secret), issuing_chain(objs, client["certFile"][0])
    assert server_chain[1:] == client_chain[1:], "both leaves come from the same CA Issuer"
    server_cert, client_cert, ca = server_chain[0]["spec"], client_chain[0]["spec"], server_chain[2]["spec"]
    assert ca["isCA"] is True and server_chain[3]["spec"] == {"selfSigned": {}}
    assert host in server_cert["dnsNames"]
    assert {"server auth", "client auth"} <= set(server_cert["usages"]), "replicas forward /bind with it"
    assert "client auth" in client_cert["usages"] and "server auth" not in client_cert["usages"]
    ca_secret = ca["secretName"]
    for _, spec in workloads(objs):
        assert ca_secret not in {v.get("secret", {}).get("secretName") for v in spec.get("volumes", [])}
    for leaf in (server_cert, client_cert):
        assert leaf["privateKey"]["rotationPolicy"] == "Always" and leaf["renewBefore"]
    # The CA is renewed with its key: the scheduler's start-time copy of ca.crt keeps verifying.
    assert ca["privateKey"]["rotationPolicy"] == "Never"


# ---- who may reach which port (NetworkPolicy) ------------------------------------------------------------------


def pod_of(objs: list[Obj], kind: str, name: str) -> Pod:
    obj = find(objs, kind, name)
    ports = {p["name"]: p["containerPort"] for c in obj["spec"]["template"]["spec"]["containers"] for p in c["ports"]}
    return Pod(obj["metadata"]["namespace"], dict(obj["spec"]["template"]["metadata"]["labels"]), ports=ports)


PROMETHEUS = Pod("monitoring", {"app.kubernetes.io/name": "prometheus", "prometheus": "k8s"}, ip="10.0.3.4")
STRANGER = Pod("kube-system", {"app.kubernetes.io/name": "coredns"})


def test_only_the_scheduler_and_the_other_replicas_reach_the_extenders_verbs(objs: list[Obj]) -> None:
    extender, scheduler = pod_of(objs, "Deployment", EXTENDER), pod_of(objs, "Deployment", SCHEDULER)
    plugin = pod_of(objs, "DaemonSet", PLUGIN)
    lookalike = Pod("payments", dict(scheduler.labels))  # the scheduler's labels, in a namespace anyone can use
    verbs, metrics = extender.ports["https"], extender.ports["metrics"]
    assert admits(objs, scheduler, extender, verbs)
    assert admits(objs, extender, extender, verbs), "a replica forwards /bind to the lease holder"
    for source in (plugin, PROMETHEUS, STRANGER, lookalike):
        assert not admits(objs, source, extender, verbs), source
    assert admits(objs, PROMETHEUS, extender, metrics)
    for source in (plugin, STRANGER, lookalike):
        assert not admits(objs, source, extender, metrics), source


def test_only_the_extender_and_prometheus_reach_the_plugin(objs: list[Obj]) -> None:
    plugin, extender = pod_of(objs, "DaemonSet", PLUGIN), pod_of(objs, "Deployment", EXTENDER)
    metrics = plugin.ports["metrics"]
    assert admits(objs, extender, plugin, metrics), "the extender's bind-time GET /readyz"
    assert admits(objs, PROMETHEUS, plugin, metrics)
    for source in (pod_of(objs, "Deployment", SCHEDULER), STRANGER, Pod("payments", dict(extender.labels))):
        assert not admits(objs, source, plugin, metrics), source


def test_metrics_peers_follow_the_values() -> None:
    nobody = helm("--set-json=networkPolicy.metricsFrom=[]")
    subnet = helm('--set-json=networkPolicy.metricsFrom=[{"ipBlock":{"cidr":"10.0.3.0/24"}}]')
    for name, kind in ((EXTENDER, "Deployment"), (PLUGIN, "DaemonSet")):
        target = pod_of(nobody, kind, name)
        assert not admits(nobody, PROMETHEUS, target, target.ports["metrics"])
        assert admits(subnet, PROMETHEUS, target, target.ports["metrics"])
        assert not admits(subnet, Pod("monitoring", dict(PROMETHEUS.labels), ip="10.0.4.4"), target,
                          target.ports["metrics"])  # fmt: skip
    extender = pod_of(nobody, "Deployment", EXTENDER)
    assert admits(nobody, pod_of(nobody, "Deployment", SCHEDULER), extender, extender.ports["https"])
    assert not [o for o in helm("networkPolicy.enabled=false") if o["kind"] == "NetworkPolicy"]


def test_network_policies_follow_the_ports() -> None:
    objs = helm("extender.port=8443", "extender.metricsPort=9000", "plugin.metricsPort=9500")
    extender, plugin = pod_of(objs, "Deployment", EXTENDER), pod_of(objs, "Deployment", SCHEDULER)
    assert admits(objs, plugin, extender, 8443) and not admits(objs, plugin, extender, 8888)
    assert admits(objs, PROMETHEUS, extender, 9000)
    device_plugin = pod_of(objs, "DaemonSet", PLUGIN)
    assert admits(objs, extender, device_plugin, 9500) and not admits(objs, extender, device_plugin, 9410)
