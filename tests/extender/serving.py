"""Serve an aiohttp app on a real loopback port from a background thread, for tests that speak real HTTP."""

from __future__ import annotations

import asyncio
import ssl
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import orjson
import urllib3
from aiohttp import web


@contextmanager
def served(
    make_app: Callable[[], web.Application], ssl_context: ssl.SSLContext | None = None
) -> Iterator[tuple[str, asyncio.AbstractEventLoop]]:
    """Yield (base URL, the app's loop). The app is built inside its own loop's thread, and cleaned up on exit.
    With `ssl_context`, it is served over TLS (an https:// base)."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    holder: dict[str, Any] = {}

    async def start() -> None:
        # A short shutdown: a watch whose client went away waits for its next event otherwise.
        runner = web.AppRunner(make_app(), access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
        await site.start()
        holder["runner"] = runner
        holder["port"] = runner.addresses[0][1]

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(start())
        except BaseException as err:  # surface start failures to the test thread
            holder["error"] = err
        ready.set()
        if "error" not in holder:
            loop.run_forever()

    thread = threading.Thread(target=run, name="served-app", daemon=True)
    thread.start()
    assert ready.wait(10), "app did not start within 10 s"
    if "error" in holder:
        raise holder["error"]
    try:
        yield f"{'https' if ssl_context else 'http'}://127.0.0.1:{holder['port']}", loop
    finally:

        async def stop() -> None:
            await holder["runner"].cleanup()
            # Keep-alive connections of test clients leave handler tasks behind: end them before the loop.
            pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


class Http:
    """A small blocking JSON client over urllib3 (a pooled, keep-alive client like kube-scheduler's)."""

    def __init__(self, base: str, **pool: Any) -> None:
        self.base = base
        self.pool = urllib3.PoolManager(maxsize=16, **pool)

    def post(
        self,
        path: str,
        doc: Any = None,
        *,
        body: bytes | None = None,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        data = body if body is not None else orjson.dumps(doc)
        response = self.pool.request(
            "POST",
            self.base + path,
            body=data,
            headers={"Content-Type": content_type, **(headers or {})},
            timeout=30,
            retries=False,
        )
        return response.status, _json_or_text(response)

    def get(self, path: str) -> tuple[int, Any]:
        response = self.pool.request("GET", self.base + path, timeout=30, retries=False)
        return response.status, _json_or_text(response)


def _json_or_text(response: Any) -> Any:
    if response.headers.get("Content-Type", "").startswith("application/json"):
        return orjson.loads(response.data)
    return response.data.decode()
