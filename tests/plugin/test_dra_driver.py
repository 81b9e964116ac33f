"""neuron-dra-driver's parts on real sockets and real files: prepare/unprepare over kubelet's gRPC API, the claim
records and CDI specs, restart from disk, hostile claims, the bounded API client, the slice publisher.

The API server is the one part not run here (the cluster tier runs the real one): claims come from a fetch
function that returns the JSON an API server would, and the publisher talks to an in-memory list of slices.
"""

from __future__ import annotations

import asyncio
import http.server
import json
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import grpc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from neuronalloc import Resource, Topology, resolve_topology
from neuronalloc.draslices import DRIVER, UNHEALTHY_TAINT, slice_specs
from neuronalloc.text import MAX_MESSAGE
from plugin import allocation as plugin_allocation
from plugin._proto.dra.v1 import api_pb2 as dra_pb2
from plugin._proto.dra.v1 import api_pb2_grpc as dra_grpc
from plugin._proto.pluginregistration.v1 import api_pb2 as reg_pb2
from plugin._proto.pluginregistration.v1 import api_pb2_grpc as reg_grpc
from plugin.config import ConfigError
from plugin.dra.api import DraApi
from plugin.dra.claims import ClaimError, check_ref, read_allocation
from plugin.dra.config import load_config
from plugin.dra.kubelet import DraServicer, RegistrationServicer, RegistrationState, SocketServer
from plugin.dra.metrics import DraMetrics
from plugin.dra.prepare import Preparer
from plugin.dra.slices import SlicePublisher
from plugin.dra.store import Store, cdi_device_id
from plugin.kubeapi import HttpStatusError, KubeApiError, from_kubeconfig
from tests.plugin.api_stub import write_kubeconfig

NODE = "node-a"
TRN1 = resolve_topology("trn1.32xlarge", 16)
INF1 = resolve_topology("inf1.6xlarge", 4)


def claim_doc(
    uid: str, devices: list[str], *, pool: str = NODE, name: str = "c", request: str = "block"
) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "ns", "uid": uid},
        "status": {
            "allocation": {
                "devices": {
                    "results": [{"driver": DRIVER, "pool": pool, "device": d, "request": request} for d in devices]
                }
            }
        },
    }


class Claims:
    """What the API server holds: claim docs by name, and how often each was read."""

    def __init__(self) -> None:
        self.docs: dict[str, Any] = {}
        self.reads: list[str] = []

    async def fetch(self, namespace: str, name: str) -> Any:
        self.reads.append(name)
        if name not in self.docs:
            raise HttpStatusError(f"GET {name}: HTTP 404", status=404)
        return self.docs[name]


def make(tmp_path: Path, topo: Topology = TRN1, unhealthy: Mapping[int, str] | None = None) -> tuple[Preparer, Claims]:
    (tmp_path / "dev").mkdir(exist_ok=True)
    store = Store(tmp_path / "data", tmp_path / "cdi", tmp_path / "dev", topo)
    store.load()
    claims = Claims()
    sick = dict(unhealthy or {})
    return Preparer(topo, NODE, store, claims.fetch, lambda: sick), claims


def run(coro: Any) -> Any:
    return asyncio.run(coro)


# ---- prepare / unprepare ------------------------------------------------------------------------------------


def test_prepare_writes_a_cdi_spec_with_exactly_what_allocate_gives(tmp_path: Path) -> None:
    preparer, claims = make(tmp_path)
    claims.docs["c"] = claim_doc("u1", ["dev-4-7"])
    outcome = run(preparer.prepare("ns", "c", "u1"))
    assert outcome.error == "" and outcome.prepared is not None
    spec = json.loads((tmp_path / "cdi" / "neuron-contig.io-claim_u1.json").read_text())
    assert spec["kind"] == "neuron-contig.io/neuron" and spec["cdiVersion"] == "0.6.0"
    (device,) = spec["devices"]
    assert outcome.prepared.cdi_id == cdi_device_id("u1") == f"neuron-contig.io/neuron={device['name']}"
    grant = plugin_allocation.grant(TRN1, tmp_path / "dev", Resource.NEURON, (4, 5, 6, 7))
    edits = device["containerEdits"]
    assert [(n["hostPath"], n["path"], n["permissions"]) for n in edits["deviceNodes"]] == [
        (host, container, "rw") for host, container in grant.device_paths
    ]
    assert edits["env"] == [f"{k}={v}" for k, v in grant.envs.items()]


def test_core_blocks_give_the_cores_and_their_devices(tmp_path: Path) -> None:
    preparer, claims = make(tmp_path, INF1)
    claims.docs["c"] = claim_doc("u1", ["core-6-7"])
    run(preparer.prepare("ns", "c", "u1"))
    spec = json.loads((tmp_path / "cdi" / "neuron-contig.io-claim_u1.json").read_text())
    edits = spec["devices"][0]["containerEdits"]
    assert [n["path"] for n in edits["deviceNodes"]] == ["/dev/neuron1"]
    assert edits["env"] == ["NEURON_RT_VISIBLE_CORES=6-7", "AWS_NEURON_VISIBLE_DEVICES=1"]


def test_prepare_is_idempotent_and_unprepare_forgets(tmp_path: Path) -> None:
    preparer, claims = make(tmp_path)
    claims.docs["c"] = claim_doc("u1", ["dev-0-3"])
    first = run(preparer.prepare("ns", "c", "u1"))
    del claims.docs["c"]  # gone from the API server: the record answers
    again = run(preparer.prepare("ns", "c", "u1"))
    assert again.prepared == first.prepared and again.rule == "already" and claims.reads == ["c"]
    assert preparer.unprepare("ns", "c", "u1") == ""
    assert preparer.unprepare("ns", "c", "u1") == ""  # again: nothing left, still fine
    assert preparer.unprepare("", "", "never-prepared") == ""
    assert list((tmp_path / "cdi").iterdir()) == [] and list((tmp_path / "data" / "claims").iterdir()) == []


@pytest.mark.parametrize(
    ("doc", "rule", "complaint"),
    [
        (claim_doc("u2", ["dev-0-0"]), "overlap", "shares hardware with claim ns/first"),
        (claim_doc("u2", ["core-0-0"]), "overlap", "shares hardware"),
        (claim_doc("u2", ["dev-8-11"]), "unhealthy", "unhealthy devices [9] (9: device_node_missing)"),
        (claim_doc("u2", ["dev-4-7"], pool="node-b"), "allocation", "not of this node"),
        (claim_doc("other-uid", ["dev-4-7"]), "allocation", "deleted and re-created"),
        (claim_doc("u2", ["dev-4-5"]), "allocation", "not a block of this node"),
        (claim_doc("u2", ["dev-4-4", "dev-6-6"]), "allocation", "not one block"),
        (claim_doc("u2", ["gpu-0"]), "allocation", "not a neuron.neuron-contig.io block name"),
        ({"metadata": {"uid": "u2"}, "status": {}}, "allocation", "not allocated yet"),
        ("not an object", "allocation", "not an object"),
    ],
)
def test_prepare_refuses_what_it_must_and_says_why(doc: Any, rule: str, complaint: str, tmp_path: Path) -> None:
    preparer, claims = make(tmp_path, unhealthy={9: "device_node_missing"})
    claims.docs["first"] = claim_doc("u1", ["dev-0-3"], name="first")
    assert run(preparer.prepare("ns", "first", "u1")).error == ""
    claims.docs["c"] = doc
    outcome = run(preparer.prepare("ns", "c", "u2"))
    assert outcome.prepared is None and outcome.rule == rule
    assert complaint in outcome.error and len(outcome.error) <= MAX_MESSAGE
    assert not (tmp_path / "cdi" / "neuron-contig.io-claim_u2.json").exists()


def test_bad_references_never_reach_a_path(tmp_path: Path) -> None:
    preparer, claims = make(tmp_path)
    for namespace, name, uid in (("ns", "c", "../../etc"), ("ns", "c", ""), ("NS", "c", "u"), ("ns", "x" * 300, "u")):
        outcome = run(preparer.prepare(namespace, name, uid))
        assert outcome.rule == "bad_reference" and len(outcome.error) <= MAX_MESSAGE
    assert preparer.unprepare("ns", "c", "../x") != ""
    assert claims.reads == []


def test_api_errors_are_the_claims_error_and_retried(tmp_path: Path) -> None:
    preparer, claims = make(tmp_path)
    outcome = run(preparer.prepare("ns", "missing", "u1"))
    assert outcome.rule == "api" and "cannot read it from the API server" in outcome.error
    claims.docs["missing"] = claim_doc("u1", ["dev-0-0"], name="missing")
    assert run(preparer.prepare("ns", "missing", "u1")).error == ""


# ---- restart from disk --------------------------------------------------------------------------------------


def test_a_restart_restores_every_prepared_claim_and_rewrites_lost_cdi_specs(tmp_path: Path) -> None:
    preparer, claims = make(tmp_path)
    claims.docs["a"] = claim_doc("u1", ["dev-0-3"], name="a")
    claims.docs["b"] = claim_doc("u2", ["core-30-30"], name="b")
    run(preparer.prepare("ns", "a", "u1"))
    run(preparer.prepare("ns", "b", "u2"))
    specs = {p.name: p.read_text() for p in (tmp_path / "cdi").iterdir()}
    (tmp_path / "cdi" / "neuron-contig.io-claim_u1.json").unlink()  # a reboot empties /var/run/cdi
    (tmp_path / "cdi" / "neuron-contig.io-claim_stale.json").write_text("{}")  # a spec no record backs
    restarted, _ = make(tmp_path)
    assert set(restarted.store.claims) == {"u1", "u2"}
    assert {p.name: p.read_text() for p in (tmp_path / "cdi").iterdir()} == specs
    claims2 = Claims()
    claims2.docs["c"] = claim_doc("u3", ["dev-0-0"])
    restarted._fetch = claims2.fetch
    assert run(restarted.prepare("ns", "c", "u3")).rule == "overlap"  # what was prepared is still held


def test_an_unreadable_record_fails_closed_until_kubelet_unprepares_it(tmp_path: Path) -> None:
    preparer, claims = make(tmp_path)
    claims.docs["a"] = claim_doc("u1", ["dev-0-3"], name="a")
    run(preparer.prepare("ns", "a", "u1"))
    (tmp_path / "data" / "claims" / "u1.json").write_text('{"version": 1, "uid": "u1", "results": "garbled"}')
    (tmp_path / "data" / "claims" / "u9.json").write_bytes(b"x" * 100_000)
    restarted, _ = make(tmp_path)
    assert set(restarted.store.unknown) == {"u1", "u9"}
    assert (tmp_path / "cdi" / "neuron-contig.io-claim_u1.json").exists()  # a container may be starting with it
    claims.docs["c"] = claim_doc("u3", ["dev-8-11"])
    restarted._fetch = claims.fetch
    outcome = run(restarted.prepare("ns", "c", "u3"))
    assert outcome.rule == "unknown_holding" and len(outcome.error) <= MAX_MESSAGE
    assert restarted.unprepare("ns", "a", "u1") == "" and restarted.unprepare("ns", "z", "u9") == ""
    assert run(restarted.prepare("ns", "c", "u3")).error == ""


# ---- hostile claims ---------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=30,
)


@st.composite
def claim_like(draw: st.DrawFn) -> Any:
    """Mostly claim-shaped documents with hostile leaves; sometimes anything at all."""
    result = draw(
        st.fixed_dictionaries(
            {},
            optional={
                "driver": st.sampled_from([DRIVER, "other.example.com"]) | json_values,
                "pool": st.sampled_from([NODE, "x"]) | json_values,
                "device": st.sampled_from(["dev-0-3", "core-1-1", "dev-1-2", "dev-99-99"]) | json_values,
                "request": st.sampled_from(["r", "x" * 200]) | json_values,
            },
        )
    )
    results = draw(st.lists(st.just(result) | json_values, max_size=40))
    doc = {
        "metadata": {"uid": draw(st.sampled_from(["u", "v"]))},
        "status": {"allocation": {"devices": {"results": results}}},
    }
    return draw(st.just(doc) | json_values)


@settings(max_examples=300, deadline=None)
@given(claim_like())
def test_read_allocation_raises_only_its_own_bounded_error(doc: Any) -> None:
    try:
        allocation = read_allocation(doc, check_ref("ns", "c", "u"), TRN1, NODE)
    except ClaimError as error:
        assert len(str(error)) <= MAX_MESSAGE
    else:
        assert allocation.grant.ids


# ---- kubelet's gRPC side, on real unix sockets ----------------------------------------------------------


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Path, Path, Claims, RegistrationState]]:
    """The DRA and registration servers on their sockets in a loop of their own thread."""
    preparer, claims = make(tmp_path)
    metrics = DraMetrics()
    state = RegistrationState()
    dra_sock, reg_sock = tmp_path / "plugins" / "dra.sock", tmp_path / "registry" / "reg.sock"
    dra = SocketServer("dra", dra_sock, lambda s: dra_grpc.add_DRAPluginServicer_to_server(
        DraServicer(preparer, NODE, metrics), s))  # fmt: skip
    reg = SocketServer("registration", reg_sock, lambda s: reg_grpc.add_RegistrationServicer_to_server(
        RegistrationServicer(dra_sock, state, metrics), s))  # fmt: skip
    loop = asyncio.new_event_loop()
    tasks: list[asyncio.Task[None]] = []

    def serve() -> None:
        asyncio.set_event_loop(loop)
        tasks.extend([loop.create_task(dra.serve()), loop.create_task(reg.serve())])
        loop.run_forever()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    for path in (dra_sock, reg_sock):
        for _ in range(200):
            if path.exists():
                break
            threading.Event().wait(0.02)
    yield dra_sock, reg_sock, claims, state

    async def stop() -> None:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run_coroutine_threadsafe(stop(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    assert not dra_sock.exists() and not reg_sock.exists()


def test_kubelet_registers_the_driver_and_prepares_over_grpc(
    served: tuple[Path, Path, Claims, RegistrationState],
) -> None:
    dra_sock, reg_sock, claims, state = served
    with grpc.insecure_channel(f"unix://{reg_sock}") as channel:
        stub = reg_grpc.RegistrationStub(channel)
        info = stub.GetInfo(reg_pb2.InfoRequest(), timeout=5)
        assert (info.type, info.name, info.endpoint, list(info.supported_versions)) == (
            "DRAPlugin", DRIVER, str(dra_sock), ["v1.DRAPlugin"],
        )  # fmt: skip
        assert state.problem() is not None
        stub.NotifyRegistrationStatus(reg_pb2.RegistrationStatus(plugin_registered=True), timeout=5)
        assert state.problem() is None
    claims.docs["a"] = claim_doc("u1", ["dev-4-4", "dev-5-5", "dev-6-6", "dev-7-7"], name="a", request="r")
    claims.docs["b"] = claim_doc("u2", ["dev-5-5"], name="b")
    with grpc.insecure_channel(f"unix://{dra_sock}") as channel:
        stub = dra_grpc.DRAPluginStub(channel)
        request = dra_pb2.NodePrepareResourcesRequest(
            claims=[
                dra_pb2.Claim(namespace="ns", name="a", uid="u1"),
                dra_pb2.Claim(namespace="ns", name="b", uid="u2"),
            ]
        )
        response = stub.NodePrepareResources(request, timeout=5)
        a, b = response.claims["u1"], response.claims["u2"]
        assert a.error == ""
        assert [(list(d.request_names), d.pool_name, d.device_name, list(d.cdi_device_ids)) for d in a.devices] == [
            ([], NODE, "dev-4-4", [cdi_device_id("u1")]),
            (["r"], NODE, "dev-5-5", []),
            (["r"], NODE, "dev-6-6", []),
            (["r"], NODE, "dev-7-7", []),
        ]
        assert "shares hardware" in b.error and not b.devices
        again = stub.NodePrepareResources(request, timeout=5)
        assert again.claims["u1"] == a
        too_many = dra_pb2.NodePrepareResourcesRequest(claims=[dra_pb2.Claim(namespace="ns", name="x", uid="u")] * 129)
        with pytest.raises(grpc.RpcError) as err:
            stub.NodePrepareResources(too_many, timeout=5)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        done = stub.NodeUnprepareResources(
            dra_pb2.NodeUnprepareResourcesRequest(claims=[dra_pb2.Claim(namespace="ns", name="a", uid="u1")]), timeout=5
        )
        assert dict(done.claims) == {"u1": dra_pb2.NodeUnprepareResourceResponse(error="")}


def test_a_removed_socket_is_served_again(served: tuple[Path, Path, Claims, RegistrationState]) -> None:
    _, reg_sock, _, _ = served
    reg_sock.unlink()
    for _ in range(100):
        if reg_sock.exists():
            break
        threading.Event().wait(0.05)
    with grpc.insecure_channel(f"unix://{reg_sock}") as channel:
        assert reg_grpc.RegistrationStub(channel).GetInfo(reg_pb2.InfoRequest(), timeout=5).name == DRIVER


# ---- the API client reads within bounds ------------------------------------------------------------------


def test_api_answers_beyond_the_bound_or_not_json_are_refused(tmp_path: Path) -> None:
    bodies = {"/huge": b"[" + b"1," * 2_000_000 + b"1]", "/junk": b"<html>", "/ok": b'{"items": []}'}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = bodies[self.path.split("?")[0]]
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            return

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        api = DraApi.of(from_kubeconfig(write_kubeconfig(tmp_path, f"http://127.0.0.1:{server.server_port}", {})))
        with pytest.raises(KubeApiError, match="larger than"):
            api.call("GET", "/huge", limit=1024)
        with pytest.raises(KubeApiError, match="not JSON"):
            api.call("GET", "/junk")
        assert api.call("GET", "/ok") == {"items": []}
    finally:
        server.shutdown()


# ---- the slice publisher --------------------------------------------------------------------------------


class SliceStore:
    """An in-memory stand-in for the API server's ResourceSlices (the cluster tier runs the real one)."""

    def __init__(self) -> None:
        self.items: dict[str, dict[str, Any]] = {}
        self.writes: list[tuple[str, str]] = []
        self.version = 0

    def node_slices(self, node: str) -> list[Any]:
        return [json.loads(json.dumps(i)) for i in self.items.values() if i["spec"]["nodeName"] == node]

    def _store(self, op: str, doc: Mapping[str, Any]) -> None:
        self.version += 1
        item = json.loads(json.dumps(doc))
        item["metadata"]["resourceVersion"] = str(self.version)
        for device in item["spec"].get("devices") or []:
            for taint in device.get("taints") or []:
                taint["timeAdded"] = "2026-01-01T00:00:00Z"  # the API server stamps taints
        self.items[doc["metadata"]["name"]] = item
        self.writes.append((op, doc["metadata"]["name"]))

    def create_slice(self, doc: Mapping[str, Any]) -> None:
        self._store("create", doc)

    def replace_slice(self, name: str, doc: Mapping[str, Any]) -> None:
        self._store("update", doc)

    def delete_slice(self, name: str) -> None:
        self.items.pop(name, None)
        self.writes.append(("delete", name))


def test_the_publisher_converges_writes_nothing_when_intact_and_bumps_the_generation(tmp_path: Path) -> None:
    store = SliceStore()
    publisher = SlicePublisher(store, NODE, TRN1, DraMetrics(), small_first=False, owner=None)  # type: ignore[arg-type]
    names = [s.name for s in slice_specs(TRN1, NODE)]

    async def scenario() -> None:
        assert await publisher.sync_once()
        assert sorted(store.items) == sorted(names) and publisher.generation == 1
        store.writes.clear()
        assert not await publisher.sync_once() and store.writes == []  # intact: no write
        publisher.set_unhealthy({3})
        assert await publisher.sync_once()
        generations = {i["spec"]["pool"]["generation"] for i in store.items.values()}
        assert generations == {2}
        tainted = [d for i in store.items.values() for d in i["spec"].get("devices", []) if d.get("taints")]
        assert tainted and all(d["taints"][0]["key"] == UNHEALTHY_TAINT for d in tainted)
        store.writes.clear()
        assert not await publisher.sync_once()  # the API server's taint times are not a difference
        del store.items[names[1]]  # kubelet wiped one (or all) at its start
        store.items["stray"] = {**store.items[names[0]], "metadata": {"name": "stray"}}
        assert await publisher.sync_once()
        assert sorted(store.items) == sorted(names) and ("delete", "stray") in store.writes
        assert {i["spec"]["pool"]["generation"] for i in store.items.values()} == {3}

    asyncio.run(scenario())


# ---- flags ------------------------------------------------------------------------------------------------


def test_flags_and_env_and_what_is_refused() -> None:
    config = load_config(["--node-name=n1"], {"SMALL_FIRST_SHARE": "0.5", "CDI_ROOT": "/etc/cdi"})
    assert config.small_first_share == 0.5 and config.cdi_root == Path("/etc/cdi")
    assert config.dra_socket == Path("/var/lib/kubelet/plugins/neuron.neuron-contig.io/dra.sock")
    assert config.registration_socket == Path("/var/lib/kubelet/plugins_registry/neuron.neuron-contig.io-reg.sock")
    for argv, complaint in (
        (["--kubeconfig=none"], "needs the API server"),
        (["--kubelet-plugins-dir=plugins"], "not absolute"),
        (["--small-first-share=2"], "outside 0..1"),
        (["--small-first-share=lots"], "not a number"),
        (["--kubelet-registration-dir=/" + "x" * 120], "longer than"),
    ):
        with pytest.raises(ConfigError, match=complaint):
            load_config(argv, {})


def test_the_driver_exports_no_device_plugin_only_series() -> None:
    """A DRA node serves no device-plugin RPCs, writes no node condition and reads no PodResources: those series
    would read as "never registered" or "never happened" on every DRA node."""
    names = {family.name for family in DraMetrics().registry.collect()}
    device_plugin_only = {
        "neuron_contig_plugin_allocations", "neuron_contig_plugin_rpcs", "neuron_contig_plugin_rpc_duration_seconds",
        "neuron_contig_plugin_registrations", "neuron_contig_plugin_registered",
        "neuron_contig_plugin_publish_errors", "neuron_contig_plugin_last_publish_timestamp_seconds",
        "neuron_contig_plugin_podresources_age_seconds", "neuron_contig_plugin_condition_errors",
        "neuron_contig_plugin_pod_neuroncore_info",
    }  # fmt: skip
    assert not names & device_plugin_only
    assert {"neuron_contig_plugin_devices", "neuron_contig_plugin_serving", "neuron_contig_dra_blocks"} <= names
