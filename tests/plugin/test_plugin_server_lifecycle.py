"""ResourceServer's own lifecycle, in-process on a temp unix socket: stop is safe before start and twice."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from neuronalloc import Resource, resolve_topology
from plugin.metrics import PluginMetrics
from plugin.nodeview import NodeView
from plugin.podresources import PodHoldings
from plugin.server import DevicePluginServicer, ResourceServer, ServerState
from plugin.sockets import identity_of, is_live, socket_identity


def make_server(socket_path: Path) -> ResourceServer:
    async def no_pods() -> PodHoldings:
        return PodHoldings(pods={})

    view = NodeView(resolve_topology("inf2.xlarge", 1), no_pods, clock=lambda: 0.0)
    servicer = DevicePluginServicer(Resource.NEURON, view, PluginMetrics(), Path("/dev"), {}, on_allocated=lambda: None)
    return ResourceServer(servicer, socket_path)


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="ncp-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_stop_is_safe_before_start_and_when_repeated(socket_dir: Path) -> None:
    async def scenario() -> None:
        never_started = make_server(socket_dir / "a.sock")
        await never_started.stop()
        await never_started.stop()
        assert never_started.state is ServerState.STOPPED
        with pytest.raises(RuntimeError, match="cannot start from state stopped"):
            await never_started.start()

        server = make_server(socket_dir / "b.sock")
        await server.start()
        assert server.state is ServerState.SERVING and is_live(server.socket_path) and server.socket_intact()
        await server.stop()
        await server.stop()
        assert server.state.value == "stopped" and not server.socket_path.exists()

    asyncio.run(scenario())


def test_stop_after_the_socket_was_wiped_then_a_fresh_server_takes_the_name(socket_dir: Path) -> None:
    """grpc core unlinks a unix socket's path when its server shuts down, so the old server must be stopped
    before its successor binds the same name. ResourceLifecycle does it in that order; this pins why."""

    async def scenario() -> None:
        first = make_server(socket_dir / "p.sock")
        await first.start()
        first.socket_path.unlink()  # kubelet restart wiped the directory
        assert not first.socket_intact()
        await first.stop()
        second = make_server(socket_dir / "p.sock")
        await second.start()
        assert is_live(second.socket_path) and second.socket_intact()
        await second.stop()
        assert not second.socket_path.exists()

    asyncio.run(scenario())


def test_a_recreated_socket_with_the_old_inode_number_is_a_new_identity(socket_dir: Path) -> None:
    # ext4 and xfs give a freed inode number to the next file created, so kubelet's new kubelet.sock often has
    # the old one's inode, and a (device, inode) identity missed that restart. The change time tells them apart.
    path = socket_dir / "kubelet.sock"
    path.touch()
    old = os.stat(path)
    recreated = os.stat_result(tuple(old)[:10], {"st_ctime_ns": old.st_ctime_ns + 1_000_000})
    assert (recreated.st_dev, recreated.st_ino) == (old.st_dev, old.st_ino)
    assert identity_of(recreated) != identity_of(old)
    assert socket_identity(path) == identity_of(old)
