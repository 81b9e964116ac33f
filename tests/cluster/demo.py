"""`python -m tests.cluster.demo` (`make demo`): a real cluster of simulated Neuron nodes, a sample workload,
and a per-node device map.

It starts etcd, kube-apiserver, kube-scheduler (deploy/'s configuration), one inf1.6xlarge, inf1.24xlarge,
inf2.48xlarge, trn1.32xlarge and trn3.48xlarge node (real kubelet device manager + our plugin each) and our
extender; runs mixed device and NeuronCore pods, pods of old specs asking `aws.amazon.com/neurondevice` (one of
them on the Trn3 node), one pod that no trn1 block can hold, and one hardware error; prints where everything
landed; and tears it all down.

`--mode dra` runs the same nodes, workload, refusal and hardware error in DRA mode: the nodes host kubelet's DRA
manager and our DRA driver, the pods ask for one block each through a ResourceClaimTemplate (a pod that asks
`aws.amazon.com/neurondevice` in device-plugin mode asks a block of whole devices here: DRA has no alias), the
stock kube-scheduler allocates the claims (with kube-controller-manager's resourceclaim-controller), and the
same device map is drawn from the ResourceSlices and claims, as `kubectl neuron` draws it.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from neuronalloc import Resource
from tests.cluster.devicemap import render_pool
from tests.cluster.harness import Cluster, missing_prerequisites
from tests.cluster.workload import Pool

NODES = {
    "inf1-6xl": "inf1.6xlarge",
    "inf1-24xl": "inf1.24xlarge",
    "inf2-48xl": "inf2.48xlarge",
    "trn1-32xl": "trn1.32xlarge",
    "trn3-48xl": "trn3.48xlarge",
}
WORKLOAD = [
    ("train-8", Resource.NEURON, 8),
    ("infer-4a", Resource.NEURON, 4),
    ("infer-4b", Resource.NEURON, 4),
    ("infer-3", Resource.NEURON, 3),
    ("infer-2", Resource.NEURON, 2),
    ("infer-1", Resource.NEURON, 1),
    ("cores-8", Resource.NEURONCORE, 8),
    ("cores-4", Resource.NEURONCORE, 4),
    ("cores-2", Resource.NEURONCORE, 2),
    ("cores-1", Resource.NEURONCORE, 1),
    ("old-spec-2", Resource.NEURONDEVICE, 2),  # a pod spec written for AWS's older plugin
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.cluster.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--keep-logs", action="store_true", help="keep the work dir (component logs) afterwards")
    parser.add_argument("--mode", choices=("device-plugin", "dra"), default="device-plugin",
                        help="serve the nodes with the device plugin and extender, or with the DRA driver")  # fmt: skip
    args = parser.parse_args(argv)
    missing = missing_prerequisites()
    if missing:
        print("cannot run the demo:\n  " + "\n  ".join(missing), file=sys.stderr)
        return 2

    workdir = Path(tempfile.mkdtemp(prefix="neuronsim-demo-"))
    started = time.monotonic()
    if args.mode == "dra":
        run_dra(workdir, started)
        return _finish(args, workdir, started)
    print(f"starting etcd, kube-apiserver, kube-scheduler and the extender (logs in {workdir / 'logs'}) ...")
    with Cluster(workdir) as cluster:
        pool = Pool(cluster, "demo")
        for suffix, instance_type in NODES.items():
            node = pool.add_node(suffix, instance_type)
            print(f"  node {node.name}: {instance_type}, {node.devices} devices, plugin registered")
        print(f"cluster up in {time.monotonic() - started:.0f}s; running {len(WORKLOAD)} pods ...")
        for name, resource, count in WORKLOAD:
            pool.create(name, resource, count)
        pool.wait_phase([name for name, _, _ in WORKLOAD], timeout=90)
        for name, resource, count in WORKLOAD:
            pool.assert_block_ok(pool.allocation(name), resource, count)
        pool.assert_no_overcommit()
        print("every pod Running on a contiguous block; no device or core handed out twice.")

        # An old pod spec on the Trn3 node: 3 devices, a block Trn3's consecutive-ID rule allows (trn1's torus not).
        old = pool.create("old-spec-3", Resource.NEURONDEVICE, 3, instance_type="trn3.48xlarge")
        pool.wait_phase([old], timeout=90)
        alloc = pool.allocation(old)
        pool.assert_block_ok(alloc, Resource.NEURONDEVICE, 3)
        pool.assert_no_overcommit()
        held = alloc.of(Resource.NEURONDEVICE)
        print(
            f"pod {old} asks {Resource.NEURONDEVICE.value}: 3 and runs on {alloc.node}, devices "
            f"{held[0]}-{held[-1]} (NEURON_RT_VISIBLE_CORES={alloc.envs['NEURON_RT_VISIBLE_CORES']})."
        )

        refused = pool.create("trn1-needs-3", Resource.NEURON, 3, instance_type="trn1.32xlarge")
        trn1 = f"{pool.name}-trn1-32xl"
        message = pool.wait_scheduling_message(refused, "cannot form a block")
        print(f"\npod {refused} stays Pending; the scheduler's event says:\n  {message}")

        cluster.inject_hw_error(trn1, 15)
        pool.wait_node_state(trn1, "device 15 is unhealthy", lambda s: 15 in s.unhealthy_devices)
        print(f"\nNEURON_HW_ERR on {trn1} device 15: the plugin reports it unhealthy.\n")

        print(render_pool(cluster, pool))
        print("\ntearing down ...")
    return _finish(args, workdir, started)


def _finish(args: argparse.Namespace, workdir: Path, started: float) -> int:
    if args.keep_logs:
        print(f"logs kept in {workdir / 'logs'}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"done in {time.monotonic() - started:.0f}s")
    return 0


def _dra_resource(resource: Resource) -> Resource:
    """DRA mode has two DeviceClasses, whole devices and NeuronCores: the neurondevice alias is whole devices."""
    return Resource.NEURON if resource.whole_devices else resource


def run_dra(workdir: Path, started: float) -> None:
    """The same nodes, workload, refusal and hardware error in DRA mode."""
    from tests.cluster.dra import (
        assert_dra_grant_ok,
        assert_no_dra_overlap,
        create_dra_pod,
        dra_grant,
        install_device_classes,
        tainted_blocks,
    )
    from tests.cluster.harness import PluginKind
    from tests.cluster.processes import wait_for

    print(f"starting etcd, kube-apiserver, kube-controller-manager and kube-scheduler (logs in {workdir / 'logs'}) ...")
    with Cluster(workdir) as cluster:
        cluster.start_dra_control_plane()
        install_device_classes(cluster)
        pool = Pool(cluster, "demo")
        for suffix, instance_type in NODES.items():
            node = pool.add_node(suffix, instance_type, plugin=PluginKind.DRA)
            print(
                f"  node {node.name}: {instance_type}, {node.devices} devices, DRA driver registered, slices published"
            )
        print(f"cluster up in {time.monotonic() - started:.0f}s; running {len(WORKLOAD)} pods, one claim each ...")
        workload = [(name, _dra_resource(resource), count) for name, resource, count in WORKLOAD]
        for name, resource, count in workload:
            create_dra_pod(pool, name, resource, count)
        pool.wait_phase([name for name, _, _ in workload], timeout=90)
        grants = [dra_grant(pool, name) for name, _, _ in workload]
        for (_, resource, count), got in zip(workload, grants, strict=True):
            assert_dra_grant_ok(pool, got, resource, count)
        assert_no_dra_overlap(grants)
        print("every claim got one contiguous block; its CDI spec names exactly those devices; nothing shared.")

        refused = create_dra_pod(pool, "trn1-needs-3", Resource.NEURON, 3, instance_type="trn1.32xlarge")
        message = pool.wait_scheduling_message(refused, "cannot allocate all claims")
        print(f"\npod {refused} stays Pending (no trn1 block has 3 devices); the scheduler's event says:\n  {message}")

        trn1 = f"{pool.name}-trn1-32xl"
        cluster.inject_hw_error(trn1, 15)
        wait_for("blocks on device 15 tainted", lambda: "dev-15-15" in tainted_blocks(cluster, trn1), timeout=30)
        print(f"\nNEURON_HW_ERR on {trn1} device 15: the driver taints every block that uses it.\n")

        print(render_pool(cluster, pool))
        print("\ntearing down ...")


if __name__ == "__main__":
    sys.exit(main())
