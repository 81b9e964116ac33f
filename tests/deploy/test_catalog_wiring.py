"""The deploy files follow the catalog and the resource names: the device plugin is scheduled onto every
instance type the catalog knows, SageMaker HyperPod's `ml.` types included, and the second scheduler sends
the extender every pod that asks for any of the three Neuron resource names."""

from __future__ import annotations

import pytest
import yaml

from neuronalloc import CATALOG, Resource, lookup_instance_type
from tests.deploy.tools import Obj, find, helm, kustomize

# The `ml.` types AWS's own chart (neuron-helm-chart 1.9.0, values.yaml neuronInstances) schedules its device
# plugin onto, and the trn2 ones SageMaker HyperPod offers (its UltraServer API and SDK changelog).
SAGEMAKER_TYPES = {
    "ml.inf2.xlarge", "ml.inf2.8xlarge", "ml.inf2.24xlarge", "ml.inf2.48xlarge",
    "ml.trn1.2xlarge", "ml.trn1.32xlarge", "ml.trn1n.32xlarge", "ml.trn2.3xlarge", "ml.trn2.48xlarge",
}  # fmt: skip


def plugin_instance_types(objs: list[Obj], name: str = "neuron-contig-device-plugin") -> list[str]:
    daemonset = find(objs, "DaemonSet", name)
    affinity = daemonset["spec"]["template"]["spec"]["affinity"]["nodeAffinity"]
    (term,) = affinity["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    # The other expression is the per-node mode switch (neuron-contig.io/mode), checked in test_dra_deploy.
    (expression,) = [e for e in term["matchExpressions"] if e["key"] == "node.kubernetes.io/instance-type"]
    assert expression["operator"] == "In"
    return list(expression["values"])


def _daemonset_objs(source: str, mode: str) -> tuple[list[Obj], str]:
    if mode == "dra":
        objs = kustomize("dra") if source == "kustomize" else helm("mode=dra")
        return objs, "neuron-contig-dra-driver"
    return (kustomize(".") if source == "kustomize" else helm()), "neuron-contig-device-plugin"


@pytest.mark.parametrize("mode", ["device-plugin", "dra"])
@pytest.mark.parametrize("source", ["kustomize", "helm"])
def test_the_plugin_runs_on_every_catalog_type_and_its_sagemaker_twins(source: str, mode: str) -> None:
    listed = plugin_instance_types(*_daemonset_objs(source, mode))
    assert len(listed) == len(set(listed))
    assert set(listed) == set(CATALOG) | SAGEMAKER_TYPES
    assert {"trn3.48xlarge", "trn3e.24xlarge", "trn2.3xlarge", "ml.trn1.32xlarge"} <= set(listed)
    assert all(lookup_instance_type(name) is not None for name in listed), "a listed type would be a linear chain"


@pytest.mark.parametrize("source", ["kustomize", "helm"])
def test_the_scheduler_hands_the_extender_every_neuron_resource_name(source: str) -> None:
    objs = kustomize(".") if source == "kustomize" else helm()
    configmap = find(objs, "ConfigMap", "neuron-contig-scheduler-config")
    config = yaml.safe_load(configmap["data"]["kube-scheduler-config.yaml"])
    (extender,) = config["extenders"]
    managed = {entry["name"]: entry["ignoredByScheduler"] for entry in extender["managedResources"]}
    assert managed == {resource.value: False for resource in Resource}


def test_the_chart_can_switch_the_alias_off() -> None:
    def env(objs: list[Obj]) -> dict[str, str]:
        daemonset = find(objs, "DaemonSet", "neuron-contig-device-plugin")
        container = daemonset["spec"]["template"]["spec"]["containers"][0]
        return {e["name"]: e.get("value", "") for e in container.get("env", [])}

    assert "DISABLE_NEURONDEVICE" not in env(helm())
    assert env(helm("plugin.neurondevice=false"))["DISABLE_NEURONDEVICE"] == "true"
