"""The unix-socket recipe, in one place: fail if live, remove if stale, wait until dialable, remove on exit."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import stat
from pathlib import Path

DIAL_TIMEOUT_SECONDS = 5.0


class SocketInUseError(RuntimeError):
    """Another process answers on the socket we were to serve (a second plugin instance?)."""


# (device, inode, change time in ns). The inode alone is not enough: ext4 and xfs hand a freed inode number to
# the next file created, so kubelet's new kubelet.sock often has the old socket's inode.
SocketIdentity = tuple[int, int, int]


def identity_of(info: os.stat_result) -> SocketIdentity:
    return (info.st_dev, info.st_ino, info.st_ctime_ns)


def socket_identity(path: Path) -> SocketIdentity | None:
    """The socket file's identity, or None if it is absent. A recreated socket has a new identity."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return identity_of(info)


def is_live(path: Path) -> bool:
    """True if something accepts connections on the unix socket at path."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except OSError:
        return False
    finally:
        probe.close()
    return True


def prepare_socket(path: Path) -> None:
    """Make path free for a new server: raise if a live server holds it, remove it if it is stale."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISSOCK(mode) and is_live(path):
        raise SocketInUseError(f"{path} is served by another process; refusing to take it over")
    path.unlink()


async def wait_dialable(path: Path, timeout: float = DIAL_TIMEOUT_SECONDS) -> None:
    """Return once a client can connect to path; kubelet dials us from inside Register."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            _, writer = await asyncio.open_unix_connection(str(path))
        except OSError:
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"{path} not dialable {timeout} s after the server started") from None
            await asyncio.sleep(0.01)
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return


def remove_socket_if_ours(path: Path, identity: SocketIdentity | None) -> None:
    """Remove path only if it is still the socket we created. (grpc core also unlinks the path at shutdown,
    which is why a successor must bind only after the old server stopped.)"""
    if identity is not None and socket_identity(path) == identity:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
