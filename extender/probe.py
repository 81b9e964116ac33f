"""Is the device plugin on a node serving kubelet right now? Asked at bind, live, of the plugin itself.

The node's published state says what the plugin last saw, but a plugin SIGKILLed a second ago, or a kubelet
restarting, shows only once the state is republished; a pod bound then would fail admission. So before a bind,
when the node publishes `neuron-contig.io/plugin-address`, the binder asks `GET http://<address>/readyz` with a
short timeout: only a 200 whose JSON names this node lets the bind go on. A node without an address is not
probed (an older plugin, or the metrics port off); its published `serving` state still counts.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson

from neuronalloc.text import quote, shorten

__all__ = ["PluginProbe"]

_MAX_REPLY = 4096  # {"node": ..., "serving": ..., "reason": ...}: a few hundred bytes


class PluginProbe:
    def __init__(self, timeout: float = 1.0) -> None:
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    async def not_serving(self, address: str, node: str, *, within: float) -> str:
        """ "" if the plugin at `address` answers that it serves `node`, else why not (for the bind error)."""
        seconds = max(0.05, min(self.timeout, within))
        try:
            async with asyncio.timeout(seconds):
                async with self._client().get(f"http://{address}/readyz", allow_redirects=False) as response:
                    body = await response.content.read(_MAX_REPLY)
                    status = response.status
        except (TimeoutError, aiohttp.ClientError, OSError) as err:
            why = shorten(repr(err), 160)
            return f"its device plugin at {address} did not answer /readyz within {seconds:g} s ({why})"
        doc: Any
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            doc = None
        if not isinstance(doc, dict):
            return f"its device plugin at {address} answered /readyz {status} without a JSON object"
        if doc.get("node") != node:
            return f"the device plugin at {address} serves node {quote(doc.get('node'), 80)}, not this node"
        if status != 200 or doc.get("serving") is not True:
            reason = doc.get("reason") or f"/readyz answered {status}"
            return f"its device plugin is not serving: {shorten(str(reason), 200)}"
        return ""

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            # No proxy, no cookies, a small pool: probes go straight to node IPs.
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=32, force_close=True), trust_env=False,
                cookie_jar=aiohttp.DummyCookieJar(),
            )  # fmt: skip
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
