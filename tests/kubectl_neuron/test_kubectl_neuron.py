"""`kubectl neuron` end to end against recorded API responses for a 100-Neuron-node cluster.

The API server here is a mock (tests/kubectl_neuron/fake_apiserver.py: a loopback HTTP server that serves
recorded NodeList/PodList/EventList JSON with the real server's paging and field selectors); the client
side is the real program: argument parsing, kubeconfig loading, the kubernetes client, neuronalloc's
decoder, and the renderers.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from kubectl_neuron.main import main
from kubectl_neuron.view import natural_key
from tests.kubectl_neuron import recorded
from tests.kubectl_neuron.fake_apiserver import FakeCluster, serve

NODE_ROW = re.compile(r"^ip-10-[01]-\S+")


@pytest.fixture
def cluster() -> FakeCluster:
    nodes, pods, events = recorded.recorded_cluster()
    # Pages of 37 (the client asks for 500): the client must follow `continue` to see every node.
    return FakeCluster(nodes=nodes, pods=pods, events=events, max_page=37)


@pytest.fixture
def kubeconfig(cluster: FakeCluster, tmp_path: Path) -> Iterator[Path]:
    with serve(cluster, tmp_path) as path:
        yield path


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys: pytest.CaptureFixture[str], kubeconfig: Path, *args: str) -> dict:  # type: ignore[type-arg]
    code, out, err = run(capsys, "--kubeconfig", str(kubeconfig), "-o", "json", *args)
    assert code == 0, err
    return json.loads(out)  # type: ignore[no-any-return]


def by_name(doc: dict) -> dict:  # type: ignore[type-arg]
    return {n["name"]: n for n in doc["nodes"]}


def test_json_lists_every_neuron_node_and_no_other(capsys: pytest.CaptureFixture[str], kubeconfig: Path) -> None:
    doc = run_json(capsys, kubeconfig)
    names = [n["name"] for n in doc["nodes"]]
    assert len(names) == 100
    assert names == sorted(names, key=natural_key)
    assert names.index("ip-10-1-0-2.ec2.internal") < names.index("ip-10-1-0-10.ec2.internal")
    assert not [n for n in names if n.startswith("ip-10-2-")], "CPU nodes must not be listed"


def test_json_device_maps_and_largest_blocks_of_known_nodes(
    capsys: pytest.CaptureFixture[str], kubeconfig: Path
) -> None:
    nodes = by_name(run_json(capsys, kubeconfig))
    inf1 = nodes["ip-10-0-0-1.ec2.internal"]
    assert inf1["instanceType"] == "inf1.6xlarge"
    assert inf1["map"] == "AA.."
    assert inf1["freeDevices"] == "2-3" and inf1["freeCores"] == "8-15"
    assert inf1["largestFreeBlock"] == {"neuron": 2, "neuroncore": 8}
    assert inf1["deviceMap"][0] == {"device": 0, "state": "whole", "pods": ["ml/resnet-a"], "freeCores": 0}

    trn1 = nodes["ip-10-0-0-2.ec2.internal"]
    assert trn1["map"] == "a... X... BBBB BBBB"
    assert trn1["unhealthyDevices"] == "4"
    # Aligned rule: no free row of 4 (device 0 has cores in use, device 4 is unhealthy) -> 1 device;
    # cores: devices 1-3 and 5-7 are two runs of 6 contiguous cores.
    assert trn1["largestFreeBlock"] == {"neuron": 1, "neuroncore": 6}
    assert trn1["status"] == "Unhealthy"
    assert trn1["deviceMap"][4]["state"] == "unhealthy"

    inf2 = nodes["ip-10-0-0-3.ec2.internal"]
    assert inf2["map"].startswith("#...")
    assert inf2["deviceMap"][0]["pods"] == ["x/p1", "x/p2"]
    assert inf2["status"] == "Cordoned,Stale"

    assert "no neuron-contig.io/ annotations" in nodes["ip-10-0-0-4.ec2.internal"]["error"]
    garbled = nodes["ip-10-0-0-5.ec2.internal"]
    assert "neuron-contig.io/free-devices" in garbled["error"] and "deviceMap" not in garbled


def test_json_pending_pods_and_why_they_wait(capsys: pytest.CaptureFixture[str], kubeconfig: Path) -> None:
    pending = {f"{p['namespace']}/{p['name']}": p for p in run_json(capsys, kubeconfig)["pending"]}
    assert set(pending) == {"ml/big-model", "ml/cores", "default/wrong-sched", "ml/with-sidecar"}
    assert pending["ml/with-sidecar"]["requests"] == {"neuron": 7}  # the setup container beside the sidecar
    big = pending["ml/big-model"]
    assert big["requests"] == {"neuron": 8}
    assert big["reason"] == "FailedScheduling" and big["message"] == recorded.NEW_MESSAGE  # the newest event
    cores = pending["ml/cores"]
    assert cores["reason"] == "Unschedulable" and "no contiguous block of 2 NeuronCores" in cores["message"]
    wrong = pending["default/wrong-sched"]
    assert wrong["reason"] == "NotAttempted"
    assert any("not neuron-contig-scheduler" in w for w in wrong["warnings"])


def test_a_renamed_scheduler_is_named_with_scheduler_name(capsys: pytest.CaptureFixture[str], kubeconfig: Path) -> None:
    # An install whose chart sets schedulerName: pods of that scheduler get no "not guaranteed contiguous"
    # warning, and pods of neuron-contig-scheduler (not the install's) do.
    doc = run_json(capsys, kubeconfig, "--scheduler-name", "default-scheduler")
    pending = {f"{p['namespace']}/{p['name']}": p for p in doc["pending"]}
    assert pending["default/wrong-sched"]["warnings"] == []
    assert any("not default-scheduler" in w for w in pending["ml/big-model"]["warnings"])


def test_reads_only_with_paged_lists(
    capsys: pytest.CaptureFixture[str], kubeconfig: Path, cluster: FakeCluster
) -> None:
    run_json(capsys, kubeconfig)
    assert {r.method for r in cluster.requests} == {"GET"}
    node_calls = [r for r in cluster.requests if r.path == "/api/v1/nodes"]
    assert len(node_calls) == 3  # 103 nodes in pages of 37
    assert [r.query.get("continue", "") for r in node_calls] == ["", "37", "74"]
    pod_call = next(r for r in cluster.requests if r.path == "/api/v1/pods")
    assert pod_call.query["fieldSelector"] == "status.phase=Pending,spec.nodeName="
    event_call = next(r for r in cluster.requests if r.path == "/api/v1/events")
    assert event_call.query["fieldSelector"] == "reason=FailedScheduling"


def test_table_reads_well_at_100_nodes(capsys: pytest.CaptureFixture[str], kubeconfig: Path) -> None:
    code, out, err = run(capsys, "--kubeconfig", str(kubeconfig))
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("100 Neuron nodes; ")
    assert "4 Pending pods need Neuron" in lines[0]
    header = next(i for i, line in enumerate(lines) if line.startswith("NODE "))
    legend = next(i for i, line in enumerate(lines) if line.startswith("map: "))
    rows = [line for line in lines[header:legend] if NODE_ROW.match(line)]
    assert len(rows) == 100
    assert lines[header + 1 : header + 101] == rows, "one line per node, right under the header"
    # The columns line up: every node row's map column starts where the header's MAP does.
    map_col = lines[header].index("MAP")
    inf1 = next(r for r in rows if r.startswith("ip-10-0-0-1."))
    assert inf1[map_col:] == "AA.."
    assert max(len(r) for r in rows if "annotations" not in r and "unreadable" not in r) <= 132
    pending_header = next(i for i, line in enumerate(lines) if line.startswith("POD "))
    assert lines[pending_header + 1].startswith("default/wrong-sched")
    assert any(line.startswith("ml/big-model ") and "neuron=8" in line for line in lines)


def test_wide_names_the_pod_behind_each_letter(capsys: pytest.CaptureFixture[str], kubeconfig: Path) -> None:
    code, out, _ = run(capsys, "--kubeconfig", str(kubeconfig), "-o", "wide", "--node", "ip-10-0-0-2.ec2.internal")
    assert code == 0
    row = next(line for line in out.splitlines() if line.startswith("ip-10-0-0-2."))
    assert row.endswith("a... X... BBBB BBBB  A=ml/small B=train/llm")
    assert out.splitlines()[0].startswith("1 Neuron nodes; ")


def test_unknown_node_is_an_error(capsys: pytest.CaptureFixture[str], kubeconfig: Path) -> None:
    code, out, err = run(capsys, "--kubeconfig", str(kubeconfig), "--node", "nope")
    assert code == 1 and out == ""
    assert "no such node: nope" in err


def test_forbidden_events_degrade_to_conditions(
    capsys: pytest.CaptureFixture[str], kubeconfig: Path, cluster: FakeCluster
) -> None:
    cluster.failures["/api/v1/events"] = (403, "Forbidden")
    doc = run_json(capsys, kubeconfig)
    assert any("scheduling events: HTTP 403" in w for w in doc["warnings"])
    big = next(p for p in doc["pending"] if p["name"] == "big-model")
    assert big["reason"] == "NotAttempted"


def test_forbidden_nodes_fail_with_the_call_named(
    capsys: pytest.CaptureFixture[str], kubeconfig: Path, cluster: FakeCluster
) -> None:
    cluster.failures["/api/v1/nodes"] = (403, "Forbidden")
    code, out, err = run(capsys, "--kubeconfig", str(kubeconfig))
    assert code == 1 and out == ""
    assert "listing nodes: HTTP 403" in err and "forbidden (fake API server)" in err


def test_unreachable_api_server(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with serve(FakeCluster(), tmp_path) as path:
        pass  # the server is stopped again: its port now refuses connections
    code, out, err = run(capsys, "--kubeconfig", str(path), "--request-timeout", "5")
    assert code == 1 and out == ""
    assert "listing nodes: cannot reach the API server" in err


def test_label_selector_is_passed_to_the_api_server(
    capsys: pytest.CaptureFixture[str], kubeconfig: Path, cluster: FakeCluster
) -> None:
    doc = run_json(capsys, kubeconfig, "-l", "node.kubernetes.io/instance-type=inf1.6xlarge")
    assert doc["nodes"] and {n["instanceType"] for n in doc["nodes"]} == {"inf1.6xlarge"}
    assert cluster.requests[0].query["labelSelector"] == "node.kubernetes.io/instance-type=inf1.6xlarge"


def test_json_carries_each_nodes_health_condition(capsys: pytest.CaptureFixture[str], kubeconfig: Path) -> None:
    nodes = by_name(run_json(capsys, kubeconfig))
    trn1 = nodes["ip-10-0-0-2.ec2.internal"]
    assert trn1["healthCondition"]["status"] == "False"
    assert trn1["healthCondition"]["reason"] == "NeuronHardwareError"
    assert trn1["healthCondition"]["message"] == recorded.TRN1_UNHEALTHY
    assert trn1["healthCondition"]["lastTransitionTime"].endswith("Z")
    unwatched = nodes["ip-10-0-0-6.ec2.internal"]
    assert unwatched["status"] == "HwUnwatched" and unwatched["unhealthyDevices"] == ""
    assert "CAP_SYSLOG" in unwatched["healthCondition"]["message"]
    assert nodes["ip-10-0-0-1.ec2.internal"]["healthCondition"]["reason"] == "AllDevicesHealthy"
    assert nodes["ip-10-0-0-1.ec2.internal"]["status"] == "OK"
    assert nodes["ip-10-0-0-4.ec2.internal"]["healthCondition"] is None


def test_table_says_why_devices_are_withdrawn(capsys: pytest.CaptureFixture[str], kubeconfig: Path) -> None:
    """A node with fewer blocks because of an unhealthy device: the health table names the devices and the
    plugin's condition, so the reason for a smaller LARGEST (and the extender's refusals) is on screen."""
    code, out, _ = run(capsys, "--kubeconfig", str(kubeconfig), "-o", "wide")
    assert code == 0
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("NODE ") and "UNHEALTHY" in line)
    section = lines[start : lines.index("", start)]
    trn1 = next(line for line in section if line.startswith("ip-10-0-0-2."))
    # SINCE: 7 minutes when the recorded objects were made (at import), more if the run is slow
    assert re.search(r"\s4\s+False NeuronHardwareError\s+[0-9]+m\s+1 of 16 Neuron devices unhealthy", trn1), trn1
    assert trn1.endswith("hw_error:SRAM_UNCORRECTABLE_ERROR on 4")
    unwatched = next(line for line in section if line.startswith("ip-10-0-0-6."))
    assert "True HardwareErrorsNotWatched" in unwatched and "CAP_SYSLOG" in unwatched
    assert not any(line.startswith("ip-10-0-0-1.") for line in section), "healthy nodes are not listed"
    generated = [line for line in section if line.startswith("ip-10-1-")]
    assert generated and all("no NeuronDevicesHealthy condition" in line for line in generated)
