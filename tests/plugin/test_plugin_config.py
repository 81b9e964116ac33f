"""Flags, env vars and defaults of neuron-device-plugin."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from neuronalloc import Resource
from plugin.config import FLAGS, LONGEST_ENDPOINT_NAME, ConfigError, load_config
from plugin.registration import socket_name


def test_defaults_fit_a_real_node() -> None:
    config = load_config([], {})
    assert config.device_root == Path("/dev")
    assert config.sysfs_root == Path("/sys")
    assert config.kubelet_socket_dir == Path("/var/lib/kubelet/device-plugins")
    assert config.pod_resources_socket == Path("/var/lib/kubelet/pod-resources/kubelet.sock")
    assert config.node_name == socket.gethostname()
    assert config.instance_type == ""
    assert config.metrics_port == 9410
    assert config.kubeconfig == "" and config.publishing_enabled
    assert config.logical_nc_config == Path("/opt/aws/neuron/logical_nc_config")
    assert config.hw_error_log == "ringbuffer"  # the kernel ring buffer through syslog(2): no mount needed
    assert config.hw_error_quarantine == 300.0 and config.hw_error_trust == "any"
    assert config.log_level == "info"
    assert config.advertise_address == "" and config.plugin_address == ""


def test_env_var_fills_an_absent_flag_and_the_flag_wins() -> None:
    env = {"NODE_NAME": "from-env", "METRICS_PORT": "9000", "INSTANCE_TYPE": "inf2.xlarge"}
    config = load_config(["--node-name", "from-flag"], env)
    assert config.node_name == "from-flag"
    assert config.metrics_port == 9000
    assert config.instance_type == "inf2.xlarge"


def test_every_flag_has_an_upper_snake_case_env_var() -> None:
    for flag in FLAGS:
        special = {
            "metrics-port": "0",
            "log-level": "debug",
            "advertise-address": "10.0.0.1",
            "hw-error-quarantine": "5",
            "hw-error-trust": "allocated",
        }
        value = special.get(flag.name, "x")
        from_env = load_config([], {flag.env_var: "true" if flag.switch else value})
        from_flag = load_config([f"--{flag.name}"] if flag.switch else [f"--{flag.name}", value], {})
        assert from_env == from_flag, flag.name
    assert {f.env_var for f in FLAGS} >= {"DEVICE_ROOT", "KUBELET_SOCKET_DIR", "POD_RESOURCES_SOCKET", "HW_ERROR_LOG"}


def test_kubeconfig_none_turns_publishing_off() -> None:
    assert not load_config(["--kubeconfig", "none"], {}).publishing_enabled


@pytest.mark.parametrize(
    ("argv", "env", "words"),
    [
        (["--metrics-port", "http"], {}, "metrics-port: 'http' is not a port number"),
        ([], {"METRICS_PORT": "70000"}, "metrics-port: 70000 is outside 0..65535"),
        (["--log-level", "loud"], {}, "log-level: 'loud' is not one of"),
        (["--kubelet-socket-dir", "/" + "d" * 90], {}, "kubelet-socket-dir: the unix socket path .* at most 107"),
        ([], {"POD_RESOURCES_SOCKET": "/" + "p" * 120}, "pod-resources-socket: the unix socket path"),
        (["--hw-error-quarantine", "soon"], {}, "hw-error-quarantine: 'soon' is not a number of seconds"),
        ([], {"HW_ERROR_QUARANTINE": "0"}, r"hw-error-quarantine: 0 is outside \(0, 604800\]"),
        (["--hw-error-quarantine", "nan"], {}, "hw-error-quarantine: nan is outside"),
        (["--hw-error-quarantine", "inf"], {}, "hw-error-quarantine: inf is outside"),
    ],
)
def test_bad_values_are_named(argv: list[str], env: dict[str, str], words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        load_config(argv, env)


def test_longest_endpoint_name_is_the_longest_socket_the_plugin_serves() -> None:
    assert max((socket_name(r) for r in Resource), key=len) == LONGEST_ENDPOINT_NAME


@pytest.mark.parametrize(
    ("argv", "address"),
    [
        ([], ""),
        (["--advertise-address", "10.0.1.7"], "10.0.1.7:9410"),
        (["--advertise-address", "fd00::7", "--metrics-port", "9000"], "[fd00::7]:9000"),
        (["--advertise-address", "[fd00::7]"], "[fd00::7]:9410"),
        (["--advertise-address", "10.0.1.7", "--metrics-port", "0"], ""),  # no port, nothing to probe
    ],
)
def test_advertise_address_gives_the_plugin_address(argv: list[str], address: str) -> None:
    config = load_config(argv, {})
    assert config.plugin_address == address
    if address:
        from neuronalloc.nodestate import parse_plugin_address

        assert parse_plugin_address(address) == address


@pytest.mark.parametrize("value", ["node-a.example", "10.0.1", "10.0.1.7:9410", "x" * 5000])
def test_advertise_address_must_be_an_ip(value: str) -> None:
    with pytest.raises(ConfigError, match=r"advertise-address: .* is not an IP address") as caught:
        load_config(["--advertise-address", value], {})
    assert len(str(caught.value)) < 200
    assert load_config([], {"ADVERTISE_ADDRESS": "10.0.0.9"}).advertise_address == "10.0.0.9"


def test_hw_error_log_keeps_its_old_values_and_names_the_ring_buffer() -> None:
    """ "" still turns the kernel-log source off and a path still names a file; the default is the ring buffer."""
    assert load_config(["--hw-error-log", ""], {}).hw_error_log == ""
    assert load_config([], {"HW_ERROR_LOG": ""}).hw_error_log == ""
    assert load_config([], {"HW_ERROR_LOG": "/var/log/messages"}).hw_error_log == "/var/log/messages"
    assert load_config(["--hw-error-log", "/dev/kmsg"], {}).hw_error_log == "/dev/kmsg"


def test_hw_error_trust_is_a_choice_and_a_bad_env_value_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert load_config(["--hw-error-trust", "allocated"], {}).hw_error_trust == "allocated"
    with pytest.raises(SystemExit) as exited:
        load_config([], {"HW_ERROR_TRUST": "some"})
    assert exited.value.code == 2 and "hw-error-trust" in capsys.readouterr().err


def test_neurondevice_is_served_unless_switched_off() -> None:
    everything = ("aws.amazon.com/neuron", "aws.amazon.com/neuroncore", "aws.amazon.com/neurondevice")
    assert load_config([], {}).resources == everything
    assert load_config(["--disable-neurondevice"], {}).resources == everything[:2]
    assert load_config([], {"DISABLE_NEURONDEVICE": "yes"}).resources == everything[:2]
    assert load_config([], {"DISABLE_NEURONDEVICE": ""}).resources == everything
