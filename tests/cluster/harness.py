"""A real Kubernetes control plane with simulated Neuron nodes, for end-to-end tests without Docker.

What runs (every piece a separate process, stopped by `Cluster.close()` and, failing that, at exit):
  - etcd, kube-apiserver and kube-scheduler: the upstream code, built into `tests/cluster/bin/neuronsim`;
    the scheduler runs `deploy/scheduler/kube-scheduler-config.yaml` with only the kubeconfig and the
    extender address changed;
  - per node, `neuronsim node`: the real kubelet device manager and PodResources server in a private mount
    namespace whose /var/lib/kubelet is the node's own temp dir, and our `neuron-device-plugin` outside it
    pointed at that dir and at a fake /dev tree of the node's instance type;
  - our `neuron-scheduler-extender`.
Only containers are not run: an admitted pod is reported Running by the simulated node.

Tests isolate themselves on the shared control plane with node pools: `add_node(..., pool=P)` labels and
taints the node, and `workload.neuron_pod(..., pool=P)` selects and tolerates exactly that pool.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import ssl
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import grpc
import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from prometheus_client.parser import text_string_to_metric_families

from neuronalloc import Topology, lookup_instance_type, resolve_topology
from neuronalloc.nodestate import FREE_DEVICES
from plugin._proto.podresources.v1 import api_pb2 as pr_pb2
from plugin._proto.podresources.v1 import api_pb2_grpc as pr_grpc
from tests.cluster.pki import ExtenderPki, make_extender_pki
from tests.cluster.processes import ManagedProcess, free_port, wait_for

REPO_ROOT = Path(__file__).resolve().parents[2]
NEURONSIM = REPO_ROOT / "tests" / "cluster" / "bin" / "neuronsim"
SCHEDULER_CONFIG = REPO_ROOT / "deploy" / "scheduler" / "kube-scheduler-config.yaml"
KUBELET_DIR = Path("/var/lib/kubelet")  # what the device manager hard-codes; bind-mounted per node

OUR_SCHEDULER = "neuron-contig-scheduler"
STOCK_SCHEDULER = "default-scheduler"
POOL_LABEL = "neuron-contig.test/pool"
NEURON = "aws.amazon.com/neuron"
ADMIN_TOKEN = "neuronsim-admin-token"  # loopback-only test cluster
STARTUP_TIMEOUT = 90.0


class PluginKind(Enum):
    OURS = "neuron-device-plugin"
    STOCK = "stock"  # neuronsim stockplugin: whole devices, no GetPreferredAllocation (the baseline)
    DRA = "neuron-dra-driver"  # DRA mode: the node hosts kubelet's DRA manager, our driver publishes slices


# DRA mode is scheduled by the stock kube-scheduler's default profile. The DRA tests run it under this name, so
# that it can share the control plane with the stock scheduler other tests start and stop.
DRA_SCHEDULER = "dra-default-scheduler"


def missing_prerequisites() -> list[str]:
    """Why this machine cannot run the cluster tier (empty when it can)."""
    missing = []
    if not NEURONSIM.exists():
        missing.append(f"{NEURONSIM.relative_to(REPO_ROOT)} is not built (run scripts/install-cluster.sh)")
    if os.geteuid() != 0:
        missing.append("not root: each simulated node needs a private mount namespace for /var/lib/kubelet")
    for tool in ("unshare", "mount", "openssl"):
        if shutil.which(tool) is None:
            missing.append(f"{tool} is not installed")
    if (
        not missing
        and subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "true"], capture_output=True, check=False
        ).returncode
    ):
        missing.append("unshare --mount is not permitted here (no CAP_SYS_ADMIN?)")
    return missing


@dataclass
class SimNode:
    """One simulated Neuron node: its kubelet side, its plugin and its private directories."""

    name: str
    instance_type: str
    devices: int
    topology: Topology  # resolve_topology(instance_type, devices): the rule and core layout
    pool: str | None
    kubelet_dir: Path  # becomes /var/lib/kubelet inside the node's mount namespace
    device_root: Path  # fake /dev: plain files neuron0..neuronN-1
    sysfs_root: Path
    hw_error_log: Path  # a stand-in for the kernel log: NEURON_HW_ERR= lines mark devices unhealthy
    plugin_kind: PluginKind | None
    kubelet: ManagedProcess
    plugin: ManagedProcess | None = None
    labels: dict[str, str] = field(default_factory=dict)
    metrics_port: int = field(default_factory=free_port)  # the plugin's /metrics, /healthz, /readyz
    plugin_args: tuple[str, ...] = ()  # more flags for our plugin (e.g. a short --hw-error-quarantine)
    cdi_root: Path | None = None  # DRA mode: where the driver writes its CDI specs

    @property
    def is_dra(self) -> bool:
        return self.plugin_kind is PluginKind.DRA

    @property
    def device_plugin_dir(self) -> Path:
        return self.kubelet_dir / "device-plugins"

    @property
    def pod_resources_socket(self) -> Path:
        return self.kubelet_dir / "pod-resources" / "kubelet.sock"


class Cluster:
    """The whole test cluster. Use as a context manager, or call `start()` and `close()`."""

    def __init__(self, workdir: Path, *, binary: Path = NEURONSIM):
        self.workdir = workdir
        self.binary = binary
        self.logs = workdir / "logs"
        self.pki = workdir / "pki"
        self.kubeconfig = workdir / "kubeconfig"
        self.api_port = free_port()
        self.extender_port = free_port()
        # Set (a port) to have the extender serve /metrics on a plain-HTTP port of its own, as deploy/ does (9411);
        # None: /metrics stays on its mutual-TLS port, as the benchmarks expect.
        self.extender_metrics_port: int | None = None
        self._extender_pki: ExtenderPki | None = None
        self.nodes: dict[str, SimNode] = {}
        self._node_serial = 0
        self._control_plane: list[ManagedProcess] = []
        self.extender: ManagedProcess | None = None
        self.scheduler: ManagedProcess | None = None
        self._api: k8s.ApiClient | None = None
        self.controller_manager: ManagedProcess | None = None  # started with the first DRA node
        self.dra_scheduler: ManagedProcess | None = None

    # --- lifecycle -------------------------------------------------------------------------------------

    def __enter__(self) -> Cluster:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self, *, extender: bool = True, scheduler: bool = True) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._start_etcd()
        self._start_apiserver()
        if extender:
            self.start_extender()
        if scheduler:
            self.scheduler = self.start_our_scheduler()

    def close(self) -> None:
        """Stop everything, nodes first (plugins before their kubelets), control plane last."""
        for node in list(self.nodes.values()):
            self._stop_node_processes(node)
        procs = [self.dra_scheduler, self.controller_manager, self.scheduler, self.extender,
                 *reversed(self._control_plane)]  # fmt: skip
        for proc in procs:
            if proc is not None:
                proc.stop()
        if self._api is not None:
            self._api.close()
            self._api = None

    # --- control plane ---------------------------------------------------------------------------------

    def _process(self, name: str, argv: Sequence[str]) -> ManagedProcess:
        return ManagedProcess(name, argv, self.logs / f"{name}.log")

    def _start_etcd(self) -> None:
        client_port, peer_port = free_port(), free_port()
        self.etcd_url = f"http://127.0.0.1:{client_port}"
        etcd = self._process(
            "etcd",
            [
                str(self.binary),
                "etcd",
                f"--data-dir={self.workdir / 'etcd'}",
                f"--client-port={client_port}",
                f"--peer-port={peer_port}",
            ],
        ).start()
        self._control_plane.append(etcd)
        wait_for("etcd /health", lambda: _http_ok(f"{self.etcd_url}/health"), timeout=STARTUP_TIMEOUT, watch=[etcd])

    def _start_apiserver(self) -> None:
        self.pki.mkdir(parents=True, exist_ok=True)
        sa_key = self.pki / "service-account.key"
        if not sa_key.exists():
            subprocess.run(["openssl", "genrsa", "-out", str(sa_key), "2048"], check=True, capture_output=True)
        tokens = self.pki / "tokens.csv"
        tokens.write_text(f'{ADMIN_TOKEN},neuronsim-admin,neuronsim-admin,"system:masters"\n')
        apiserver = self._process(
            "kube-apiserver",
            [
                str(self.binary),
                "apiserver",
                f"--etcd-servers={self.etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={self.api_port}",
                f"--cert-dir={self.pki}",
                f"--token-auth-file={tokens}",
                "--authorization-mode=RBAC",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={sa_key}",
                f"--service-account-signing-key-file={sa_key}",
                "--service-cluster-ip-range=10.96.0.0/16",
                # No controller-manager runs: nothing would create service accounts or lift the
                # not-ready taint that TaintNodesByCondition puts on every new node.
                "--disable-admission-plugins=ServiceAccount,TaintNodesByCondition",
                "--allow-privileged=true",
                "--endpoint-reconciler-type=none",
                "--v=1",
            ],
        ).start()
        self._control_plane.append(apiserver)
        ready_url = f"https://127.0.0.1:{self.api_port}/readyz"
        wait_for(
            "kube-apiserver /readyz",
            lambda: _http_ok(ready_url, token=ADMIN_TOKEN),
            timeout=STARTUP_TIMEOUT,
            watch=[apiserver],
        )
        self._write_kubeconfig()
        # The bootstrap controllers create kube-system and the RBAC roles right after /readyz.
        wait_for(
            "namespace kube-system",
            lambda: self.core.read_namespace("kube-system"),
            timeout=STARTUP_TIMEOUT,
            watch=[apiserver],
        )

    def _write_kubeconfig(self) -> None:
        # The API server's self-signed serving certificate is followed by the CA that signed it.
        kubeconfig = {
            "apiVersion": "v1",
            "kind": "Config",
            "current-context": "neuronsim",
            "clusters": [
                {
                    "name": "neuronsim",
                    "cluster": {
                        "server": f"https://127.0.0.1:{self.api_port}",
                        "certificate-authority": str(self.pki / "apiserver.crt"),
                    },
                }
            ],
            "users": [{"name": "admin", "user": {"token": ADMIN_TOKEN}}],
            "contexts": [{"name": "neuronsim", "context": {"cluster": "neuronsim", "user": "admin"}}],
        }
        self.kubeconfig.write_text(yaml.safe_dump(kubeconfig))

    @property
    def api(self) -> k8s.ApiClient:
        if self._api is None:
            self._api = k8s_config.new_client_from_config(config_file=str(self.kubeconfig))
        return self._api

    @property
    def core(self) -> k8s.CoreV1Api:
        return k8s.CoreV1Api(self.api)

    @property
    def extender_pki(self) -> ExtenderPki:
        """The CA, the extender's serving certificate and the scheduler's client certificate (made once)."""
        if self._extender_pki is None:
            self._extender_pki = make_extender_pki(self.workdir / "extender-pki")
        return self._extender_pki

    @property
    def extender_url(self) -> str:
        return f"https://127.0.0.1:{self.extender_port}"

    def _our_scheduler_config(self) -> dict[str, Any]:
        """deploy/'s KubeSchedulerConfiguration with only the kubeconfig, the extender address and the paths of
        the TLS files changed: the scheduler talks to the extender over mutual TLS, as it does on EKS."""
        config: dict[str, Any] = yaml.safe_load(SCHEDULER_CONFIG.read_text())
        config.setdefault("clientConnection", {})["kubeconfig"] = str(self.kubeconfig)
        pki = self.extender_pki
        for extender in config.get("extenders", []):
            extender["urlPrefix"] = self.extender_url
            extender["enableHTTPS"] = True
            extender["tlsConfig"] = {
                "certFile": str(pki.scheduler.cert),
                "keyFile": str(pki.scheduler.key),
                "caFile": str(pki.ca_file),
            }
        return config

    def extender_ssl_context(self, client: bool = True) -> ssl.SSLContext:
        """A client context that trusts the extender's CA and, with `client`, presents the scheduler's cert."""
        context = ssl.create_default_context(cafile=str(self.extender_pki.ca_file))
        if client:
            context.load_cert_chain(str(self.extender_pki.scheduler.cert), str(self.extender_pki.scheduler.key))
        return context

    def _start_scheduler(self, name: str, config: dict[str, Any], extra_args: Sequence[str] = ()) -> ManagedProcess:
        path = self.workdir / f"{name}-config.yaml"
        path.write_text(yaml.safe_dump(config))
        # --secure-port=0: no health endpoint is needed, and nothing else listens (`extra_args` may override it).
        scheduler = self._process(
            name, [str(self.binary), "scheduler", f"--config={path}", "--secure-port=0", "--v=2", *extra_args]
        ).start()
        lease = config.get("leaderElection", {})
        if lease.get("leaderElect", True):
            namespace = lease.get("resourceNamespace", "kube-system")
            lease_name = lease.get("resourceName", "kube-scheduler")
            coordination = k8s.CoordinationV1Api(self.api)
            wait_for(
                f"{name} to hold lease {namespace}/{lease_name}",
                lambda: coordination.read_namespaced_lease(lease_name, namespace).spec.holder_identity,
                timeout=STARTUP_TIMEOUT,
                watch=[scheduler],
            )
        return scheduler

    def start_our_scheduler(
        self, *, client_qps: float | None = None, client_burst: int | None = None, extra_args: Sequence[str] = ()
    ) -> ManagedProcess:
        """deploy/'s scheduler wired to our extender, optionally with another API client rate (qps/burst).
        Caller stops it (unless `start` started it)."""
        config = _with_client_rate(self._our_scheduler_config(), client_qps, client_burst)
        return self._start_scheduler("kube-scheduler", config, extra_args)

    def start_stock_scheduler(
        self, *, client_qps: float | None = None, client_burst: int | None = None, extra_args: Sequence[str] = ()
    ) -> ManagedProcess:
        """The default kube-scheduler profile, no extender: the "before" baseline. Caller stops it."""
        config = {
            "apiVersion": "kubescheduler.config.k8s.io/v1",
            "kind": "KubeSchedulerConfiguration",
            "clientConnection": {"kubeconfig": str(self.kubeconfig)},
            "leaderElection": {"leaderElect": False},
            "profiles": [{"schedulerName": STOCK_SCHEDULER}],
        }
        return self._start_scheduler(
            "stock-kube-scheduler", _with_client_rate(config, client_qps, client_burst), extra_args
        )

    # --- extender --------------------------------------------------------------------------------------

    def start_extender(self, extra_args: Sequence[str] = (), launcher: Sequence[str] = ()) -> ManagedProcess:
        """Our extender; `extra_args` go after the harness's own flags, `launcher` before the executable (a
        profiler, say: `python -m cProfile -o FILE`)."""
        self.extender = self.launch_extender(self.extender_port, extra_args=extra_args, launcher=launcher)
        return self.extender

    def launch_extender(
        self,
        port: int,
        *,
        name: str = "neuron-scheduler-extender",
        extra_args: Sequence[str] = (),
        launcher: Sequence[str] = (),
        metrics_port: int | None = None,
    ) -> ManagedProcess:
        """An extender listening on `port`, with the cluster's kubeconfig and extender PKI, returned once it answers
        /readyz there. `start_extender` runs the cluster's own on `extender_port`; any other is the caller's to
        stop (a second replica, say, logging to `name`.log). `metrics_port`: None = the cluster's
        `extender_metrics_port` (shared: one process at a time), 0 = /metrics on the main port."""
        metrics = self.extender_metrics_port if metrics_port is None else metrics_port
        exe = shutil.which("neuron-scheduler-extender")
        if exe is None:
            raise RuntimeError("neuron-scheduler-extender is not installed (pip install -e .)")
        pki = self.extender_pki
        extender = self._process(
            name,
            [
                *launcher,
                exe,
                "--address=127.0.0.1",
                f"--port={port}",
                f"--kubeconfig={self.kubeconfig}",
                f"--tls-cert-file={pki.server.cert}",
                f"--tls-key-file={pki.server.key}",
                f"--tls-client-ca-file={pki.ca_file}",
                "--log-level=info",
                *([f"--metrics-port={metrics}"] if metrics else []),
                *extra_args,
            ],
        ).start()
        url = f"https://127.0.0.1:{port}/readyz"
        context = self.extender_ssl_context()
        wait_for(f"{name} /readyz", lambda: _http_ok(url, context=context), timeout=STARTUP_TIMEOUT, watch=[extender])
        return extender

    @contextlib.contextmanager
    def extender_stopped(self) -> Iterator[None]:
        """The cluster's own extender stopped while the caller serves something else on `extender_port`, and
        started again afterwards, whatever happened (it hands its Lease back when it stops, so it binds again at
        once). The caller stops its own processes inside."""
        if self.extender is not None:
            self.extender.stop()
        try:
            yield
        finally:
            self.start_extender()

    def extender_samples(self, metric: str, port: int | None = None) -> dict[tuple[tuple[str, str], ...], float]:
        """The samples of `metric` (a counter's `_total` included), by their sorted labels, from the extender
        whose /metrics is on `port` over mutual TLS (default: `extender_port`)."""
        url = f"https://127.0.0.1:{port or self.extender_port}/metrics"
        with urllib.request.urlopen(url, timeout=5, context=self.extender_ssl_context()) as response:
            text = response.read().decode()
        return {
            tuple(sorted(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name in (metric, f"{metric}_total")
        }

    def restart_extender(self) -> None:
        if self.extender is not None:
            self.extender.stop()
        self.start_extender()

    # --- nodes -----------------------------------------------------------------------------------------

    def add_node(
        self,
        name: str,
        instance_type: str,
        *,
        pool: str | None = None,
        plugin: PluginKind | None = PluginKind.OURS,
        unhealthy_devices: Iterable[int] = (),
        wait: bool = True,
        plugin_args: Sequence[str] = (),
        labels: Mapping[str, str] | None = None,
    ) -> SimNode:
        """Start a simulated node of `instance_type` and, unless `plugin` is None, its device plugin."""
        row = lookup_instance_type(instance_type)
        if row is None:
            raise ValueError(f"unknown instance type {instance_type!r}")
        # Short paths: a unix socket path must stay under 108 bytes (the plugin's sockets live in here).
        self._node_serial += 1
        base = self.workdir / "n" / str(self._node_serial)
        node = SimNode(
            name=name,
            instance_type=instance_type,
            devices=row.devices,
            topology=resolve_topology(instance_type, row.devices),
            pool=pool,
            kubelet_dir=base / "kubelet",
            device_root=base / "dev",
            sysfs_root=base / "sys",
            hw_error_log=base / "kmsg.log",
            plugin_kind=plugin,
            kubelet=self._process(f"node-{name}", []),
            labels={**({POOL_LABEL: pool} if pool else {}), **(labels or {})},
            plugin_args=tuple(plugin_args),
        )
        if plugin is PluginKind.DRA:
            node.cdi_root = base / "cdi"
            self.start_dra_control_plane()
        _make_device_tree(node.device_root, row.devices)
        node.sysfs_root.mkdir(parents=True, exist_ok=True)
        node.hw_error_log.touch()
        (node.kubelet_dir / "device-plugins").mkdir(parents=True, exist_ok=True)
        self.nodes[name] = node
        self.start_kubelet(node)
        if plugin is not None:
            self.start_plugin(node)
        if wait and plugin is not None:
            self.wait_node_ready(node, unhealthy=len(set(unhealthy_devices)))
        return node

    def start_kubelet(self, node: SimNode) -> None:
        KUBELET_DIR.mkdir(parents=True, exist_ok=True)
        argv = [
            # A private mount namespace in which the node's own directory is /var/lib/kubelet.
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
            'mount --bind "$0" /var/lib/kubelet && exec "$@"',
            str(node.kubelet_dir),
            str(self.binary),
            "node",
            f"--kubeconfig={self.kubeconfig}",
            f"--node-name={node.name}",
            f"--instance-type={node.instance_type}",
        ]
        argv += [f"--label={k}={v}" for k, v in node.labels.items()]
        if node.is_dra:
            argv.append("--dra")
        if node.pool:
            argv.append(f"--taint={POOL_LABEL}={node.pool}:NoSchedule")
        node.kubelet = self._process(f"node-{node.name}", argv).start()
        registration = node.device_plugin_dir / "kubelet.sock"
        wait_for(f"{node.name}: kubelet.sock", registration.exists, timeout=STARTUP_TIMEOUT, watch=[node.kubelet])
        wait_for(
            f"{node.name}: PodResources socket",
            node.pod_resources_socket.exists,
            timeout=STARTUP_TIMEOUT,
            watch=[node.kubelet],
        )

    def start_plugin(self, node: SimNode) -> None:
        if node.is_dra:
            node.plugin = self._process(f"plugin-{node.name}", self._dra_driver_argv(node)).start()
            return
        if node.plugin_kind is PluginKind.STOCK:
            argv = [
                str(self.binary),
                "stockplugin",
                f"--kubelet-socket-dir={node.device_plugin_dir}",
                f"--devices={node.devices}",
                f"--device-root={node.device_root}",
            ]
        else:
            exe = shutil.which("neuron-device-plugin")
            if exe is None:
                raise RuntimeError("neuron-device-plugin is not installed (pip install -e .)")
            argv = [
                exe,
                f"--device-root={node.device_root}",
                f"--sysfs-root={node.sysfs_root}",
                f"--kubelet-socket-dir={node.device_plugin_dir}",
                f"--pod-resources-socket={node.pod_resources_socket}",
                f"--node-name={node.name}",
                f"--kubeconfig={self.kubeconfig}",
                # /readyz on this port is what the extender asks before it binds a pod to the node.
                f"--metrics-port={node.metrics_port}",
                "--advertise-address=127.0.0.1",
                f"--logical-nc-config={node.sysfs_root / 'no-logical-nc-config'}",
                f"--hw-error-log={node.hw_error_log}",
                "--log-level=info",
                *node.plugin_args,
            ]
        node.plugin = self._process(f"plugin-{node.name}", argv).start()

    def wait_node_ready(self, node: SimNode, *, unhealthy: int = 0, timeout: float = STARTUP_TIMEOUT) -> None:
        """Wait until the node advertises its devices and (for our plugin) has published its state."""
        if node.is_dra:
            self.wait_dra_ready(node, timeout=timeout)
            return
        want = node.devices - unhealthy

        def ready() -> bool:
            # The device manager itself has the plugin's healthy devices (not a Node status left over
            # from before a kubelet restart) ...
            if len(self.allocatable_devices(node.name).get(NEURON, ())) != want:
                return False
            # ... and the scheduler can see them.
            obj = self.core.read_node(node.name)
            if int(obj.status.allocatable.get(NEURON, "0")) != want:
                return False
            if node.plugin_kind is PluginKind.OURS:
                annotations = obj.metadata.annotations or {}
                return FREE_DEVICES in annotations
            return True

        procs = [node.kubelet] + ([node.plugin] if node.plugin else [])
        wait_for(f"{node.name}: {want} {NEURON} allocatable and state published", ready, timeout=timeout, watch=procs)

    def restart_kubelet(self, name: str, *, wait: bool = True) -> None:
        """Kubelet restart: the device manager stops and starts again, wiping every socket in its dir.
        With `wait`, returns once the plugin has registered again and its devices are allocatable."""
        node = self.nodes[name]
        node.kubelet.stop()
        self.start_kubelet(node)
        if wait and node.plugin_kind is not None:
            self.wait_node_ready(node)

    def restart_plugin(self, name: str, *, wait: bool = True) -> None:
        node = self.nodes[name]
        if node.plugin is not None:
            node.plugin.stop()
        self.start_plugin(node)
        if wait:
            self.wait_node_ready(node)

    # --- DRA mode ---------------------------------------------------------------------------------------

    def start_dra_control_plane(self) -> None:
        """What DRA mode needs beyond the API server, started once: kube-controller-manager with only its
        resourceclaim-controller (claims from templates, deallocation when pods are gone) and the stock
        kube-scheduler's default profile (as DRA_SCHEDULER)."""
        if self.controller_manager is None:
            self.controller_manager = self._process(
                "kube-controller-manager",
                [
                    str(self.binary), "controller-manager", f"--kubeconfig={self.kubeconfig}",
                    "--controllers=resourceclaim-controller", "--leader-elect=false", "--secure-port=0", "--v=1",
                ],
            ).start()  # fmt: skip
        if self.dra_scheduler is None:
            config = {
                "apiVersion": "kubescheduler.config.k8s.io/v1",
                "kind": "KubeSchedulerConfiguration",
                "clientConnection": {"kubeconfig": str(self.kubeconfig)},
                "leaderElection": {"leaderElect": False},
                "profiles": [{"schedulerName": DRA_SCHEDULER}],
            }
            self.dra_scheduler = self._start_scheduler("dra-kube-scheduler", config)

    def _dra_driver_argv(self, node: SimNode) -> list[str]:
        exe = shutil.which("neuron-dra-driver")
        if exe is None:
            raise RuntimeError("neuron-dra-driver is not installed (pip install -e .)")
        assert node.kubelet.pid is not None and node.cdi_root is not None
        # Inside the node's mount namespace, where /var/lib/kubelet is the node's own directory: the endpoint the
        # driver registers is the path kubelet dials, as on a real node.
        return [
            "nsenter", "-t", str(node.kubelet.pid), "-m", "--",
            exe,
            f"--device-root={node.device_root}",
            f"--sysfs-root={node.sysfs_root}",
            f"--node-name={node.name}",
            f"--kubeconfig={self.kubeconfig}",
            f"--metrics-port={node.metrics_port}",
            f"--logical-nc-config={node.sysfs_root / 'no-logical-nc-config'}",
            f"--hw-error-log={node.hw_error_log}",
            f"--cdi-root={node.cdi_root}",
            "--log-level=info",
        ]  # fmt: skip

    def dra_readiness(self, node: SimNode) -> dict[str, Any]:
        """The driver's GET /readyz body (serving, or why not)."""
        url = f"http://127.0.0.1:{node.metrics_port}/readyz"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                body: dict[str, Any] = json.loads(response.read())
        except urllib.error.HTTPError as error:
            body = json.loads(error.read())
        return body

    def wait_dra_ready(self, node: SimNode, *, timeout: float = STARTUP_TIMEOUT) -> None:
        """Wait until the driver serves: registered with this node's kubelet and its ResourceSlices published."""
        procs = [p for p in (node.kubelet, node.plugin) if p is not None]
        wait_for(
            f"{node.name}: DRA driver registered and slices published",
            lambda: self.dra_readiness(node).get("serving") is True,
            timeout=timeout,
            watch=procs,
        )

    def allocatable_devices(self, name: str) -> dict[str, frozenset[int]]:
        """The node's PodResources GetAllocatableResources: healthy devices the device manager can hand out."""
        node = self.nodes[name]
        with grpc.insecure_channel(f"unix://{node.pod_resources_socket}") as channel:
            stub = pr_grpc.PodResourcesListerStub(channel)
            response = stub.GetAllocatableResources(pr_pb2.AllocatableResourcesRequest(), timeout=10)
        held: dict[str, set[int]] = {}
        for devices in response.devices:
            held.setdefault(devices.resource_name, set()).update(int(i) for i in devices.device_ids)
        return {res: frozenset(ids) for res, ids in held.items()}

    def pod_resources(self, name: str) -> dict[str, dict[str, frozenset[int]]]:
        """Ask the node's PodResources server (kubelet's own code) directly: "ns/pod" -> resource -> IDs."""
        node = self.nodes[name]
        with grpc.insecure_channel(f"unix://{node.pod_resources_socket}") as channel:
            stub = pr_grpc.PodResourcesListerStub(channel)
            response = stub.List(pr_pb2.ListPodResourcesRequest(), timeout=10)
        out: dict[str, dict[str, frozenset[int]]] = {}
        for pod in response.pod_resources:
            held: dict[str, set[int]] = {}
            for container in pod.containers:
                for devices in container.devices:
                    held.setdefault(devices.resource_name, set()).update(int(i) for i in devices.device_ids)
            out[f"{pod.namespace}/{pod.name}"] = {res: frozenset(ids) for res, ids in held.items()}
        return out

    def inject_hw_error(self, name: str, device: int, kind: str = "SRAM_UNCORRECTABLE_ERROR") -> None:
        """Append a Neuron driver hardware-error message for `device` to the node's kernel-log stand-in, as a
        syslog daemon writes a kernel message to a file (traditional format: time, host, `kernel:` tag)."""
        import time  # local: only this method of the harness is the plugin's to change

        node = self.nodes[name]
        stamp = time.strftime("%b %e %H:%M:%S")
        with node.hw_error_log.open("a") as log:
            log.write(
                f"{stamp} {name} kernel: NEURON_HW_ERR={kind} instance-id=i-neuronsim hostname={name} "
                f"nd-id={device} nc-id=0 action=CONTACT_SUPPORT\n"
            )

    def remove_node(self, name: str) -> None:
        node = self.nodes.pop(name)
        self._stop_node_processes(node)
        try:
            self.core.delete_node(name)
        except k8s.ApiException as exc:
            if exc.status != 404:
                raise

    def _stop_node_processes(self, node: SimNode) -> None:
        if node.plugin is not None:
            node.plugin.stop()
        node.kubelet.stop()

    def log_tails(self, lines: int = 15) -> str:
        """The end of every log, for a failing test's report."""
        parts = []
        for path in sorted(self.logs.glob("*.log")):
            text = path.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"==> {path.name} <==\n" + "\n".join(text))
        return "\n".join(parts)


def _with_client_rate(config: dict[str, Any], qps: float | None, burst: int | None) -> dict[str, Any]:
    """The scheduler's API client rate limit (client-go's defaults are 50 qps, burst 100)."""
    connection = config.setdefault("clientConnection", {})
    if qps is not None:
        connection["qps"] = qps
    if burst is not None:
        connection["burst"] = burst
    return config


def bare_node(
    name: str, allocatable: Mapping[str, str], annotations: Mapping[str, str], labels: Mapping[str, str]
) -> dict[str, Any]:
    """A Node object as a kubelet would register it, status included (the API server keeps a node's status on
    create), with no kubelet behind it."""
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {"kubernetes.io/hostname": name, **labels},
            "annotations": dict(annotations),
        },
        "status": {
            "capacity": dict(allocatable),
            "allocatable": dict(allocatable),
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "bare node"}],
        },
    }


def _make_device_tree(root: Path, devices: int) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(devices):
        (root / f"neuron{i}").touch()


def _http_ok(url: str, *, token: str | None = None, context: ssl.SSLContext | None = None) -> bool:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    if context is None and url.startswith("https"):
        # Only the API server's readiness probe skips verification, before the kubeconfig (with the CA) exists.
        context = ssl._create_unverified_context()
    with urllib.request.urlopen(request, timeout=2, context=context) as response:
        return bool(response.status == 200)
