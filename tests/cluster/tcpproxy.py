"""Loopback TCP proxies for the cluster tier: bytes only, so TLS passes through them end to end.

`LoopbackProxy` runs on an event loop in a thread of its own and hands each accepted connection to `relay`;
subclasses choose the backend and how bytes toward it travel (`pipe`, or a pipe of their own).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable
from typing import Any, Self, TypeVar

__all__ = ["LoopbackProxy", "pipe"]

_T = TypeVar("_T")
Pipe = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    """Copy until end of stream, then half-close the other side (TLS close_notify and TCP FIN pass through)."""
    try:
        while data := await source.read(64 * 1024):
            sink.write(data)
            await sink.drain()
        if sink.can_write_eof():
            sink.write_eof()
    except (OSError, RuntimeError):
        sink.close()


class LoopbackProxy:
    """A TCP proxy listening on 127.0.0.1:`port`, on its own event loop thread. `relay` serves one accepted
    connection (usually with `connect`); `close` cancels every open one."""

    def __init__(self, port: int, name: str) -> None:
        self.port = port
        self._open: set[asyncio.Task[Any]] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=name, daemon=True)
        self._server: asyncio.Server | None = None

    def start(self) -> Self:
        self._thread.start()
        try:
            self.call(self._listen())
        except BaseException:
            self.close()
            raise
        return self

    def call(self, coroutine: Awaitable[_T]) -> _T:
        """Run `coroutine` on the proxy's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=10)  # type: ignore[arg-type]

    async def relay(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    async def connect(
        self, backend: int, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter, forward: Pipe = pipe
    ) -> None:
        """Pipe the client to `backend` (through `forward`) and back, then close both ends. A backend that is down
        closes the client's connection, as it would through a Service."""
        upstream_w: asyncio.StreamWriter | None = None
        try:
            upstream_r, connected = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", backend), timeout=5)
            upstream_w = connected
            await asyncio.gather(forward(client_r, connected), pipe(upstream_r, client_w))
        except (OSError, TimeoutError):
            pass
        finally:
            for writer in (client_w, upstream_w):
                if writer is not None:
                    writer.close()

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port, reuse_address=True)

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._open.add(task)
        try:
            await self.relay(client_r, client_w)
        except asyncio.CancelledError:
            client_w.close()  # the proxy is closing
        finally:
            self._open.discard(task)

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._open):
            task.cancel()
        await asyncio.gather(*self._open, return_exceptions=True)

    def close(self) -> None:
        if self._thread.is_alive():
            with contextlib.suppress(Exception):
                self.call(self._shutdown())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
        if not self._loop.is_running():
            self._loop.close()
