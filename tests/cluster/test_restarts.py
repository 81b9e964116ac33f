"""Restarts never fail a pod: pods are created and deleted while kubelets restart, plugins are SIGKILLed or
restarted, and the extender restarts, and no pod ever reaches `Failed`.

Kubelet fails admission (`UnexpectedAdmissionError`, for good: nobody retries a pod owned by nobody) when a
pod reaches a node whose device plugin is not registered with it. So the scheduler must not place a Neuron pod
on such a node: the plugin says it is not serving while it starts, stops or re-registers after a kubelet
restart, and the extender's bind asks the plugin itself before it binds (which covers a SIGKILL, where the
plugin cannot say anything).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable

from kubernetes import client as k8s
from kubernetes import watch as k8s_watch

from neuronalloc import Resource
from tests.cluster.harness import Cluster, SimNode
from tests.cluster.processes import wait_for
from tests.cluster.workload import Pool

SEED = 20261128
ROUNDS = 14  # chaos actions; with the pauses between them, about a minute of churn
PODS = 72


class FailedPodWatch(threading.Thread):
    """Records every pod of the namespace that is ever seen in phase Failed (a later delete cannot hide it)."""

    def __init__(self, core: k8s.CoreV1Api, namespace: str) -> None:
        super().__init__(name="failed-pod-watch", daemon=True)
        self._core = core
        self._namespace = namespace
        self._stopping = threading.Event()
        self.failed: dict[str, str] = {}

    def run(self) -> None:
        while not self._stopping.is_set():
            watcher = k8s_watch.Watch()
            try:
                for event in watcher.stream(self._core.list_namespaced_pod, self._namespace, timeout_seconds=5):
                    pod = event["object"]
                    if pod.status is not None and pod.status.phase == "Failed":
                        self.failed[pod.metadata.name] = f"{pod.status.reason}: {pod.status.message}"
                    if self._stopping.is_set():
                        break
            except Exception:  # the API server is not what restarts here; retry the watch
                time.sleep(0.2)
            finally:
                watcher.stop()

    def stop(self) -> None:
        self._stopping.set()
        self.join(timeout=10)


def _chaos(cluster: Cluster, nodes: list[SimNode], rng: random.Random, log: list[str]) -> Callable[[], None]:
    def kubelet_restart(node: SimNode) -> None:
        cluster.restart_kubelet(node.name, wait=False)

    def plugin_sigkill(node: SimNode) -> None:
        assert node.plugin is not None
        node.plugin.kill()
        time.sleep(rng.uniform(0.0, 1.5))  # the DaemonSet's container restart, after some delay
        cluster.start_plugin(node)

    def plugin_restart(node: SimNode) -> None:
        cluster.restart_plugin(node.name, wait=False)

    def extender_restart(_: SimNode) -> None:
        cluster.restart_extender()

    actions = [kubelet_restart, plugin_sigkill, plugin_restart, extender_restart]

    def step() -> None:
        action = rng.choice(actions)
        node = rng.choice(nodes)
        log.append(f"{time.strftime('%H:%M:%S')} {action.__name__} {node.name}")
        action(node)

    return step


def test_no_pod_fails_while_every_component_restarts(pool: Pool, cluster: Cluster) -> None:
    rng = random.Random(SEED)
    nodes = [
        pool.add_node("inf1", "inf1.24xlarge"),
        pool.add_node("inf2", "inf2.48xlarge"),
        pool.add_node("trn1", "trn1.32xlarge"),
    ]
    watch = FailedPodWatch(pool.core, pool.namespace)
    watch.start()
    actions: list[str] = []
    step = _chaos(cluster, nodes, rng, actions)
    stop = threading.Event()

    def chaos_loop() -> None:
        for _ in range(ROUNDS):
            if stop.is_set():
                return
            step()
            stop.wait(rng.uniform(0.5, 3.0))

    chaos = threading.Thread(target=chaos_loop, name="chaos", daemon=True)
    chaos.start()
    created: list[str] = []
    try:
        for i in range(PODS):
            resource = rng.choice([Resource.NEURON, Resource.NEURONCORE])
            count = rng.choice([1, 2, 4] if resource is Resource.NEURON else [1, 2, 3, 4, 8])
            created.append(pool.create(f"p{i}", resource, count))
            time.sleep(rng.uniform(0.2, 1.2))
            running = [p.metadata.name for p in pool.pods() if p.status.phase == "Running"]
            if len(running) > 8 and rng.random() < 0.4:
                pool.delete(rng.choice(running), wait=False)
        chaos.join(timeout=300)
    finally:
        stop.set()
        chaos.join(timeout=60)

    try:
        # Every kind of restart is over: each node serves again, and every pod left is placed or waits.
        for node in nodes:
            if node.plugin is None or not node.plugin.alive:
                cluster.start_plugin(node)
            cluster.wait_node_ready(node)
        if cluster.extender is None or not cluster.extender.alive:
            cluster.start_extender()

        def settled() -> bool:
            # Running, or Pending with the scheduler's reason (the nodes may be full): nothing in between.
            return all(
                p.status.phase == "Running"
                or (p.status.phase == "Pending" and not p.spec.node_name and pool.scheduling_messages(p.metadata.name))
                for p in pool.pods()
                if p.metadata.deletion_timestamp is None and p.status.phase != "Failed"
            )

        wait_for("every pod left to be Running or waiting with a reason", settled, timeout=180, watch=pool._procs())
    finally:
        watch.stop()
    assert not watch.failed, f"pods Failed during the restarts: {watch.failed}\nactions: {actions}"
    pool.assert_no_overcommit()
    for pod in pool.pods():
        if pod.status.phase != "Running":
            continue
        alloc = pool.allocation(pod.metadata.name)
        for resource in Resource:
            if alloc.of(resource):
                pool.assert_block_ok(alloc, resource, len(alloc.of(resource)))
    assert {action.split()[1] for action in actions} == {
        "kubelet_restart",
        "plugin_sigkill",
        "plugin_restart",
        "extender_restart",
    }, f"the seed must exercise every kind of restart: {actions}"
