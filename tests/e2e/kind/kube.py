"""kubectl, pods and node state for the kind tier (kind has a real kubelet: the source of truth is what
the plugin published from kubelet's PodResources, and what the container itself sees)."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

from neuronalloc import INSTANCE_TYPE_LABEL, Resource, decode_node_state
from neuronalloc.nodestate import NodeState

REPO_ROOT = Path(__file__).resolve().parents[3]
SCHEDULER = "neuron-contig-scheduler"


class Kubectl:
    def __init__(self, context: str):
        self.context = context

    def run(self, *args: str, stdin: str | None = None, check: bool = True) -> str:
        done = subprocess.run(
            ["kubectl", f"--context={self.context}", *args],
            input=stdin,
            capture_output=True,
            text=True,
            check=False,
            timeout=180,
        )
        if check and done.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} failed: {done.stderr.strip()}")
        return done.stdout

    def get(self, *args: str) -> Any:
        return json.loads(self.run("get", *args, "-o", "json"))

    def apply(self, obj: dict[str, Any]) -> None:
        self.run("apply", "-f", "-", stdin=json.dumps(obj))

    def node_for(self, instance_type: str) -> str:
        nodes = self.get("nodes", "-l", f"{INSTANCE_TYPE_LABEL}={instance_type}")["items"]
        if not nodes:
            raise AssertionError(f"no kind node labelled {instance_type}")
        return str(nodes[0]["metadata"]["name"])

    def node_state(self, node: str) -> NodeState:
        return decode_node_state(self.get("node", node)["metadata"].get("annotations", {}))

    def pod(self, namespace: str, name: str) -> Any:
        return self.get("pod", "-n", namespace, name)

    def wait(self, what: str, probe: Any, timeout: float = 180.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            result = probe()
            if result:
                return result
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
            time.sleep(1)

    def wait_running(self, namespace: str, name: str) -> Any:
        def running() -> Any:
            pod = self.pod(namespace, name)
            if pod["status"].get("phase") == "Failed":
                raise AssertionError(f"{name} failed: {pod['status'].get('reason')}: {pod['status'].get('message')}")
            return pod if pod["status"].get("phase") == "Running" else None

        return self.wait(f"pod {namespace}/{name} Running", running)

    def scheduling_messages(self, namespace: str, name: str) -> list[str]:
        events = self.get(
            "events", "-n", namespace, "--field-selector", f"involvedObject.name={name},reason=FailedScheduling"
        )
        return [str(e.get("message", "")) for e in events["items"]]


def neuron_pod(namespace: str, name: str, resource: Resource, count: int, instance_type: str) -> dict[str, Any]:
    """A pod that prints what it was given (env and /dev/neuron*) and sleeps."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "schedulerName": SCHEDULER,
            "nodeSelector": {INSTANCE_TYPE_LABEL: instance_type},
            "terminationGracePeriodSeconds": 0,
            "containers": [
                {
                    "name": "main",
                    "image": "busybox:1.36",
                    "command": ["sh", "-c", "env | grep NEURON; ls /dev | grep neuron; sleep 36000"],
                    "resources": {"limits": {resource.value: str(count)}},
                }
            ],
        },
    }


def holding(kubectl: Kubectl, node: str, namespace: str, name: str, resource: Resource) -> frozenset[int]:
    state = kubectl.node_state(node)
    held = state.pods.get(f"{namespace}/{name}")
    if held is None:
        return frozenset()
    return held.devices if resource is Resource.NEURON else held.cores
