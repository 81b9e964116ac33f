"""Recorded API objects for a 100-Neuron-node EKS cluster, in the shapes the API server returns.

The node annotations are written with the real codec (`neuronalloc.encode_node_state`), as the plugin
writes them. The first nodes are hand-made cases with known answers; the rest come from a seeded generator.
"""

from __future__ import annotations

import random
import zlib
from datetime import UTC, datetime, timedelta
from typing import Any

from neuronalloc import (
    CATALOG,
    NodeState,
    PodHolding,
    encode_node_state,
    free_sets,
    resolve_topology,
)

Obj = dict[str, Any]


def now() -> datetime:
    """Timestamps are relative to when the cluster is recorded, not to when this module was imported: "20 s ago"
    must still be fresh when `kubectl neuron` reads it, however long the test session has run before (the CLI
    compares with the wall clock, and calls it stale past 10 minutes)."""
    return datetime.now(UTC).replace(microsecond=0)


def health_condition(status: str, reason: str, message: str, since: timedelta = timedelta(minutes=7)) -> Obj:
    """The plugin's NeuronDevicesHealthy node condition (plugin/condition.py)."""
    stamp = (now() - since).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "type": "NeuronDevicesHealthy",
        "status": status,
        "reason": reason,
        "message": message,
        "lastHeartbeatTime": stamp,
        "lastTransitionTime": stamp,
    }


def node(
    name: str,
    instance_type: str,
    annotations: dict[str, str] | None = None,
    *,
    ready: bool = True,
    unschedulable: bool = False,
    conditions: tuple[Obj, ...] = (),
) -> Obj:
    row = CATALOG.get(instance_type)
    capacity = {"cpu": "96", "memory": "393216Mi", "pods": "110"}
    if row is not None:
        capacity["aws.amazon.com/neuron"] = str(row.devices)
        capacity["aws.amazon.com/neuroncore"] = str(row.devices * row.cores_per_device)
    return {
        "metadata": {
            "name": name,
            "uid": f"uid-{name}",
            "labels": {
                "kubernetes.io/hostname": name,
                "node.kubernetes.io/instance-type": instance_type,
                "topology.kubernetes.io/zone": "us-west-2a",
            },
            "annotations": {"node.alpha.kubernetes.io/ttl": "0", **(annotations or {})},
        },
        "spec": {
            "providerID": f"aws:///us-west-2a/i-{zlib.crc32(name.encode()):012x}",
            **({"unschedulable": True} if unschedulable else {}),
        },
        "status": {
            "capacity": capacity,
            "allocatable": capacity,
            "conditions": [
                {"type": "Ready", "status": "True" if ready else "Unknown", "reason": "KubeletReady"},
                *conditions,
            ],
        },
    }


def state_annotations(
    instance_type: str,
    pods: dict[str, PodHolding],
    unhealthy: frozenset[int] | set[int] = frozenset(),
    observed_at: datetime | None = None,
) -> dict[str, str]:
    """`observed_at`: when the plugin observed this state (default: 20 s ago)."""
    observed_at = observed_at or now() - timedelta(seconds=20)
    row = CATALOG[instance_type]
    topo = resolve_topology(instance_type, row.devices)
    used_devices = {d for h in pods.values() for d in h.devices}
    used_cores = {c for h in pods.values() for c in h.cores}
    free_devices, free_cores = free_sets(topo, used_devices, used_cores, unhealthy)
    return encode_node_state(NodeState(topo, free_devices, free_cores, frozenset(unhealthy), pods, observed_at))


TRN1_UNHEALTHY = "1 of 16 Neuron devices unhealthy, not offered to pods: hw_error:SRAM_UNCORRECTABLE_ERROR on 4"
TRN2_UNWATCHED = (
    "all 16 Neuron devices are present; hardware errors are not seen: syslog(2) SYSLOG_ACTION_READ_ALL: "
    "Operation not permitted: ... needs CAP_SYSLOG"
)


def hand_made_nodes() -> list[Obj]:
    return [
        # inf1.6xlarge: a pod holds devices 0-1; 2-3 free.
        node(
            "ip-10-0-0-1.ec2.internal",
            "inf1.6xlarge",
            state_annotations("inf1.6xlarge", {"ml/resnet-a": PodHolding(devices=frozenset({0, 1}))}),
            conditions=(health_condition("True", "AllDevicesHealthy", "all 4 Neuron devices are healthy"),),
        ),
        # trn1.32xlarge: cores 0-1 (device 0) held, device 4 unhealthy, devices 8-15 held whole.
        node(
            "ip-10-0-0-2.ec2.internal",
            "trn1.32xlarge",
            state_annotations(
                "trn1.32xlarge",
                {
                    "ml/small": PodHolding(cores=frozenset({0, 1})),
                    "train/llm": PodHolding(devices=frozenset(range(8, 16))),
                },
                unhealthy={4},
            ),
            conditions=(health_condition("False", "NeuronHardwareError", TRN1_UNHEALTHY),),
        ),
        # inf2.48xlarge: device 0's two cores held by two pods; stale state (observed an hour ago); cordoned.
        node(
            "ip-10-0-0-3.ec2.internal",
            "inf2.48xlarge",
            state_annotations(
                "inf2.48xlarge",
                {"x/p1": PodHolding(cores=frozenset({0})), "x/p2": PodHolding(cores=frozenset({1}))},
                observed_at=now() - timedelta(hours=1),
            ),
            unschedulable=True,
        ),
        # A Neuron node whose plugin never published.
        node("ip-10-0-0-4.ec2.internal", "inf2.xlarge"),
        # Garbled annotations.
        node(
            "ip-10-0-0-5.ec2.internal",
            "inf1.24xlarge",
            {**state_annotations("inf1.24xlarge", {}), "neuron-contig.io/free-devices": "0-zz"},
        ),
        # trn2.48xlarge: all present, but the plugin cannot read the kernel log (no CAP_SYSLOG).
        node(
            "ip-10-0-0-6.ec2.internal",
            "trn2.48xlarge",
            state_annotations("trn2.48xlarge", {}),
            conditions=(health_condition("True", "HardwareErrorsNotWatched", TRN2_UNWATCHED),),
        ),
    ]


def generated_nodes(count: int, seed: int = 7) -> list[Obj]:
    rng = random.Random(seed)
    types = ["inf1.6xlarge", "inf1.24xlarge", "inf2.24xlarge", "inf2.48xlarge", "trn1.32xlarge", "trn2.48xlarge"]
    nodes = []
    for i in range(count):
        instance_type = rng.choice(types)
        row = CATALOG[instance_type]
        devices = list(range(row.devices))
        rng.shuffle(devices)
        pods: dict[str, PodHolding] = {}
        taken = devices[: rng.randint(0, row.devices)]
        for j in range(0, len(taken), 2):
            pods[f"team-{i % 7}/job-{i}-{j}"] = PodHolding(devices=frozenset(taken[j : j + 2]))
        free = [d for d in devices if d not in taken]
        unhealthy = {free.pop()} if free and rng.random() < 0.1 else set()
        if free and rng.random() < 0.5:
            device = free.pop()
            pods[f"team-{i % 7}/cores-{i}"] = PodHolding(cores=frozenset({device * row.cores_per_device}))
        nodes.append(
            node(
                f"ip-10-1-{i // 250}-{i % 250 + 1}.ec2.internal",
                instance_type,
                state_annotations(instance_type, pods, unhealthy),
            )
        )
    return nodes


def cpu_nodes() -> list[Obj]:
    return [node(f"ip-10-2-0-{i}.ec2.internal", "m5.large") for i in range(1, 4)]


def pod(
    namespace: str,
    name: str,
    limits: dict[str, str],
    *,
    scheduler: str = "neuron-contig-scheduler",
    node_name: str = "",
    phase: str = "Pending",
    condition: tuple[str, str] | None = None,
) -> Obj:
    status: Obj = {"phase": phase}
    if condition is not None:
        status["conditions"] = [
            {"type": "PodScheduled", "status": "False", "reason": condition[0], "message": condition[1]}
        ]
    return {
        "metadata": {
            "namespace": namespace,
            "name": name,
            "uid": f"uid-{namespace}-{name}",
            "creationTimestamp": (now() - timedelta(minutes=12)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        },
        "spec": {
            "schedulerName": scheduler,
            "containers": [{"name": "main", "image": "app:1", "resources": {"limits": limits}}],
            **({"nodeName": node_name} if node_name else {}),
        },
        "status": status,
    }


def scheduling_event(target: Obj, message: str, minutes_ago: int) -> Obj:
    meta = target["metadata"]
    stamp = (now() - timedelta(minutes=minutes_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "metadata": {"namespace": meta["namespace"], "name": f"{meta['name']}.{minutes_ago}"},
        "involvedObject": {"kind": "Pod", "namespace": meta["namespace"], "name": meta["name"], "uid": meta["uid"]},
        "reason": "FailedScheduling",
        "type": "Warning",
        "message": message,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
        "source": {"component": "neuron-contig-scheduler"},
    }


BIG = pod("ml", "big-model", {"aws.amazon.com/neuron": "8"})
CORES = pod(
    "ml",
    "cores",
    {"aws.amazon.com/neuroncore": "2"},
    condition=("Unschedulable", "0/103 nodes are available: 100 no contiguous block of 2 NeuronCores."),
)
WRONG_SCHEDULER = pod("default", "wrong-sched", {"aws.amazon.com/neuron": "1"}, scheduler="default-scheduler")
NOT_NEURON = pod("default", "web", {"cpu": "1"})
RUNNING = pod("ml", "running", {"aws.amazon.com/neuron": "1"}, node_name="ip-10-0-0-1.ec2.internal", phase="Running")
# A 4-device app with a 2-device sidecar (restartable init container, kept for the pod's life) and a 5-device
# setup init container that runs beside the sidecar and hands its devices back: the pod holds 6 at most, 7 while
# the setup runs.
SIDECAR = pod("ml", "with-sidecar", {"aws.amazon.com/neuron": "4"})
SIDECAR["spec"]["initContainers"] = [
    {"name": "proxy", "restartPolicy": "Always", "resources": {"limits": {"aws.amazon.com/neuron": "2"}}},
    {"name": "setup", "resources": {"limits": {"aws.amazon.com/neuron": "5"}}},
]

OLD_MESSAGE = "0/103 nodes are available: 103 node(s) were unschedulable."
NEW_MESSAGE = (
    "0/103 nodes are available: 3 node(s) didn't match Pod's node affinity/selector, "
    "100 node(s) had no contiguous block of 8 aws.amazon.com/neuron devices."
)


def recorded_cluster() -> tuple[list[Obj], list[Obj], list[Obj]]:
    """(nodes, pods, events): 100 Neuron nodes (6 hand-made + 94 generated) and 3 CPU nodes."""
    nodes = hand_made_nodes() + generated_nodes(94) + cpu_nodes()
    pods = [BIG, CORES, WRONG_SCHEDULER, NOT_NEURON, RUNNING, SIDECAR]
    events = [scheduling_event(BIG, NEW_MESSAGE, 1), scheduling_event(BIG, OLD_MESSAGE, 9)]
    return nodes, pods, events
