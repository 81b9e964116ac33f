"""DRA mode's manifests (deploy/dra/) and the chart's `mode` switch.

The per-node switch is the label neuron-contig.io/mode: the DRA driver runs only where it is "dra", the device
plugin only where it is not, in every rendering, so no node ever runs both. The chart with mode=dra renders
exactly deploy/dra/; mode=both renders both sets. The driver's privileges are what it needs and no more.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from neuronalloc import Resource
from neuronalloc.draslices import DRIVER, NEURON_CLASS, NEURONCORE_CLASS, claim_template
from tests.deploy.test_chart import assert_same
from tests.deploy.test_security import named_permissions, pod_spec
from tests.deploy.tools import DEPLOY, Obj, find, helm, kustomize
from tests.deploy.variants import CHART_VARIANTS

DRA_DS, PLUGIN_DS = "neuron-contig-dra-driver", "neuron-contig-device-plugin"
MODE_LABEL = "neuron-contig.io/mode"
DRA_HOST_PATHS = {  # path -> read-only?
    "/var/lib/kubelet/plugins_registry": False,
    f"/var/lib/kubelet/plugins/{DRIVER}": False,
    "/var/run/cdi": False,
    "/dev": True,
    "/opt/aws/neuron": True,
}
EXAMPLES = DEPLOY / "examples" / "dra"


def test_chart_mode_dra_renders_exactly_deploy_dra() -> None:
    assert_same(helm("mode=dra"), kustomize("dra"))


def test_chart_mode_both_renders_both_sets() -> None:
    assert_same(helm("mode=both"), kustomize(".") + kustomize("dra"))


def _mode_expression(objs: list[Obj], daemonset: str) -> dict[str, Any]:
    spec = pod_spec(objs, "DaemonSet", daemonset)
    terms = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert len(terms) == 1, "one term: every expression must hold"
    (mode,) = [e for e in terms[0]["matchExpressions"] if e["key"] == MODE_LABEL]
    return mode  # type: ignore[no-any-return]


@pytest.mark.parametrize("variant", sorted(CHART_VARIANTS))
def test_no_node_runs_both_daemonsets_in_any_rendering(variant: str) -> None:
    objs = helm(*CHART_VARIANTS[variant])
    names = {o["metadata"]["name"] for o in objs if o["kind"] == "DaemonSet"}
    if PLUGIN_DS in names:
        assert _mode_expression(objs, PLUGIN_DS) == {"key": MODE_LABEL, "operator": "NotIn", "values": ["dra"]}
    if DRA_DS in names:
        assert _mode_expression(objs, DRA_DS) == {"key": MODE_LABEL, "operator": "In", "values": ["dra"]}
        assert not any(o["kind"] == "Deployment" for o in objs if "mode=dra" in CHART_VARIANTS[variant]), variant


def test_plain_manifests_keep_the_switch_too() -> None:
    assert _mode_expression(kustomize("."), PLUGIN_DS)["operator"] == "NotIn"
    dra = kustomize("dra")
    assert _mode_expression(dra, DRA_DS) == {"key": MODE_LABEL, "operator": "In", "values": ["dra"]}
    # Its instance types: test_catalog_wiring (every catalog type and the SageMaker ml. twins, both modes).


@pytest.mark.parametrize("source", ["kustomize", "helm"])
def test_dra_driver_least_privilege(source: str) -> None:
    objs = kustomize("dra") if source == "kustomize" else helm("mode=dra")
    spec = pod_spec(objs, "DaemonSet", DRA_DS)
    for host_ns in ("hostNetwork", "hostPID", "hostIPC"):
        assert not spec.get(host_ns), host_ns
    (container,) = spec["containers"]
    assert container["command"] == ["neuron-dra-driver"]
    ctx = container["securityContext"]
    assert ctx["privileged"] is False and ctx["allowPrivilegeEscalation"] is False
    assert ctx["readOnlyRootFilesystem"] is True and ctx["capabilities"] == {"drop": ["ALL"]}
    host_paths = {v["name"]: v["hostPath"]["path"] for v in spec["volumes"] if "hostPath" in v}
    assert set(host_paths.values()) == set(DRA_HOST_PATHS)
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    for name, path in host_paths.items():
        assert mounts[name]["mountPath"] == path, "kubelet dials the DRA socket at the host's path"
        assert bool(mounts[name].get("readOnly")) is DRA_HOST_PATHS[path], path
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert spec["enableServiceLinks"] is False and spec["priorityClassName"] == "system-node-critical"
    assert named_permissions(objs, DRA_DS) == {
        ("", "nodes", "get", "*"),
        ("resource.k8s.io", "resourceslices", "list", "*"),
        ("resource.k8s.io", "resourceslices", "create", "*"),
        ("resource.k8s.io", "resourceslices", "update", "*"),
        ("resource.k8s.io", "resourceslices", "delete", "*"),
        ("resource.k8s.io", "resourceclaims", "get", "*"),
    }
    policy = find(objs, "ValidatingAdmissionPolicy", "neuron-contig-dra-driver-slice-writes")
    assert policy["spec"]["failurePolicy"] == "Fail"
    assert "neuron-contig-dra-driver" in policy["spec"]["matchConditions"][0]["expression"]
    binding = find(objs, "ValidatingAdmissionPolicyBinding", "neuron-contig-dra-driver-slice-writes")
    assert binding["spec"] == {"policyName": "neuron-contig-dra-driver-slice-writes", "validationActions": ["Deny"]}


def test_every_dra_host_path_mount_is_justified_in_a_comment() -> None:
    for source in (DEPLOY / "dra" / "daemonset.yaml", DEPLOY / "helm/neuron-contig/templates/dra-daemonset.yaml"):
        lines = source.read_text().splitlines()
        start = next(i for i, line in enumerate(lines) if line.strip() == "volumeMounts:")
        end = next(i for i, line in enumerate(lines) if line.strip() == "volumes:")
        for i in range(start + 1, end):
            if lines[i].lstrip().startswith("- name: "):
                above = lines[i - 1].strip()
                assert above.startswith("#"), f"{source.name}:{i + 1} unjustified"
    assert '# Pod Security: needs the namespace\'s "privileged"' in (DEPLOY / "dra" / "daemonset.yaml").read_text()


def test_device_classes_select_the_driver_and_name_no_extended_resource() -> None:
    classes = {o["metadata"]["name"]: o for o in kustomize("dra") if o["kind"] == "DeviceClass"}
    assert set(classes) == {NEURON_CLASS, NEURONCORE_CLASS}
    for name, resource in ((NEURON_CLASS, "neuron"), (NEURONCORE_CLASS, "neuroncore")):
        (selector,) = classes[name]["spec"]["selectors"]
        assert f'device.driver == "{DRIVER}"' in selector["cel"]["expression"]
        assert f'.resource == "{resource}"' in selector["cel"]["expression"]
        assert "extendedResourceName" not in classes[name]["spec"], "N devices would not be one block of N"


def _examples() -> list[Path]:
    return sorted(EXAMPLES.glob("*.yaml"))


def test_examples_are_what_the_generator_makes() -> None:
    """The ResourceClaimTemplates shipped as examples are `claim_template`'s output, so they cannot drift from
    the attributes the driver publishes; every pod example names a template shipped beside it."""
    templates: dict[str, Obj] = {}
    pods: list[Obj] = []
    for path in _examples():
        for doc in yaml.safe_load_all(path.read_text()):
            if doc["kind"] == "ResourceClaimTemplate":
                templates[doc["metadata"]["name"]] = doc
            elif doc["kind"] == "Pod":
                pods.append(doc)
    assert {"neuron-block-4", "neuroncore-block-8"} <= set(templates)
    for name, doc in templates.items():
        if name.startswith("neuron-block-"):
            expected = claim_template(name, Resource.NEURON, int(name.rsplit("-", 1)[1]))
        elif name.startswith("neuroncore-block-"):
            expected = claim_template(name, Resource.NEURONCORE, int(name.rsplit("-", 1)[1]))
        else:
            continue  # the plain one-request example
        assert doc == expected, name
    assert pods
    for pod in pods:
        for claim in pod["spec"]["resourceClaims"]:
            assert claim["resourceClaimTemplateName"] in templates
        assert "schedulerName" not in pod["spec"], "DRA mode needs no second scheduler"


@pytest.mark.parametrize("path", _examples(), ids=lambda p: p.name)
def test_examples_decode_into_the_real_types(path: Path) -> None:
    from tests.deploy.test_schema import check

    text = path.read_text()
    assert len(check(text)) == len([d for d in yaml.safe_load_all(text) if d])
