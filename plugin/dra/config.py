"""Command-line flags of `neuron-dra-driver`; every flag also reads its upper-snake-case env var (flag wins).

The discovery, health and metrics flags are the device plugin's, with the same names and defaults, so one
DaemonSet template fits both; the rest say where kubelet's DRA directories and the CDI specs are.
"""

from __future__ import annotations

import argparse
import os
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from neuronalloc.draslices import DRIVER
from neuroncli.flags import Flag, add_flags
from plugin.config import LOG_LEVELS, MAX_UNIX_SOCKET_PATH, ConfigError, _port

DEFAULT_SMALL_FIRST_SHARE = "0.25"


@dataclass(frozen=True)
class DriverConfig:
    device_root: Path
    sysfs_root: Path
    node_name: str
    instance_type: str
    metrics_port: int
    kubeconfig: str
    logical_nc_config: Path
    hw_error_log: str
    log_level: str
    kubelet_registration_dir: Path
    kubelet_plugins_dir: Path
    cdi_root: Path
    small_first_share: float

    @property
    def plugin_dir(self) -> Path:
        """The driver's own directory under kubelet's plugins dir: its DRA socket and its claim records."""
        return self.kubelet_plugins_dir / DRIVER

    @property
    def dra_socket(self) -> Path:
        return self.plugin_dir / "dra.sock"

    @property
    def registration_socket(self) -> Path:
        return self.kubelet_registration_dir / f"{DRIVER}-reg.sock"


FLAGS: tuple[Flag, ...] = (
    Flag("device-root", "/dev", "directory holding the neuronN device nodes (CDI specs name <device-root>/neuronN)"),
    Flag("sysfs-root", "/sys", "sysfs mount; per-device facts are read from class/neuron_device/neuronN/"),
    Flag("node-name", "", "this node's name (default: the hostname); also the ResourceSlice pool's name"),
    Flag(
        "instance-type", "", 'instance type; "" = the node label node.kubernetes.io/instance-type, else by device count'
    ),
    Flag("metrics-port", "9410", "port for /metrics, /healthz and /readyz; 0 = off"),
    Flag("kubeconfig", "", 'kubeconfig path; "" = in-cluster service account'),
    Flag("logical-nc-config", "/opt/aws/neuron/logical_nc_config", "trn2 logical NeuronCore setting (1 or 2)"),
    Flag(
        "hw-error-log",
        "",
        "where NEURON_HW_ERR= records are read: ringbuffer (syslog(2), needs CAP_SYSLOG), /dev/kmsg, another path = "
        'a syslog-format file; "" = off',
    ),
    Flag("log-level", "info", "one of " + ", ".join(LOG_LEVELS)),
    Flag(
        "kubelet-registration-dir",
        "/var/lib/kubelet/plugins_registry",
        "kubelet's plugin registration directory (the driver's registration socket goes here)",
    ),
    Flag(
        "kubelet-plugins-dir",
        "/var/lib/kubelet/plugins",
        f"kubelet's plugins directory; the driver serves <dir>/{DRIVER}/dra.sock and keeps its claim records "
        "there. Must be the path kubelet sees: it is the endpoint kubelet dials",
    ),
    Flag("cdi-root", "/var/run/cdi", "where the container runtime reads CDI specs; one spec per prepared claim"),
    Flag(
        "small-first-share",
        DEFAULT_SMALL_FIRST_SHARE,
        "share of nodes (0-1, chosen by a hash of the node name) whose blocks say smallFirst=true, so claims that "
        "ask for small blocks fill them first; the node label neuron-contig.io/small-first=true|false overrides",
    ),
)


def build_parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="neuron-dra-driver",
        description="Kubernetes DRA driver that publishes only contiguous AWS Neuron blocks as devices.",
    )
    add_flags(parser, FLAGS, env)
    return parser


def _share(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"small-first-share: {raw!r} is not a number from 0 to 1") from None
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"small-first-share: {value} is outside 0..1")
    return value


def load_config(argv: Sequence[str] | None, env: Mapping[str, str]) -> DriverConfig:
    raw: dict[str, str] = vars(build_parser(env).parse_args(argv))
    log_level = raw["log_level"].lower()
    if log_level not in LOG_LEVELS:
        raise ConfigError(f"log-level: {raw['log_level']!r} is not one of {', '.join(LOG_LEVELS)}")
    config = DriverConfig(
        device_root=Path(raw["device_root"]),
        sysfs_root=Path(raw["sysfs_root"]),
        node_name=raw["node_name"] or socket.gethostname(),
        instance_type=raw["instance_type"].strip(),
        metrics_port=_port("metrics-port", raw["metrics_port"]),
        kubeconfig=raw["kubeconfig"],
        logical_nc_config=Path(raw["logical_nc_config"]),
        hw_error_log=raw["hw_error_log"],
        log_level=log_level,
        kubelet_registration_dir=Path(raw["kubelet_registration_dir"]),
        kubelet_plugins_dir=Path(raw["kubelet_plugins_dir"]),
        cdi_root=Path(raw["cdi_root"]),
        small_first_share=_share(raw["small_first_share"]),
    )
    if config.kubeconfig == "none":
        raise ConfigError("kubeconfig: DRA mode needs the API server (ResourceSlices, claims); 'none' is not allowed")
    for name, path in (("kubelet-plugins-dir", config.dra_socket),
                       ("kubelet-registration-dir", config.registration_socket)):  # fmt: skip
        if not path.is_absolute():
            raise ConfigError(f"{name}: {str(path)!r} is not absolute; kubelet dials the path as given")
        if len(os.fsencode(path)) > MAX_UNIX_SOCKET_PATH:
            raise ConfigError(f"{name}: the socket path {str(path)!r} is longer than {MAX_UNIX_SOCKET_PATH} bytes")
    return config
