"""A do-nothing scheduler extender over mutual TLS: the floor any extender on this stack pays per request.

    python bench/noop_extender.py --port P --cert C --key K --client-ca CA

aiohttp with Python's ssl, as the extender, but none of its work: /filter passes every name it is given,
/filter-best the first `--best-nodes` of them, /prioritize gives each a score of 0.
`bench/scheduler_throughput.py --profile noop` points our scheduler configuration's verbs at it (no bind verb: the
scheduler binds itself, off its cycle as it does with ours), so the scheduler's cycle shows what the round trips
to a Python server cost on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import ssl

import orjson
from aiohttp import web

BEST_NODES = web.AppKey("best_nodes", int)


async def filter_(request: web.Request) -> web.Response:
    args = orjson.loads(await request.read())
    reply = {"Nodes": None, "NodeNames": args.get("NodeNames") or [], "FailedNodes": {},
             "FailedAndUnresolvableNodes": {}, "Error": ""}  # fmt: skip
    return web.Response(body=orjson.dumps(reply), content_type="application/json")


async def filter_best(request: web.Request) -> web.Response:
    """As /filter-best answers when every node scores the same: the first `--best-nodes` names."""
    args = orjson.loads(await request.read())
    reply = {"Nodes": None, "NodeNames": (args.get("NodeNames") or [])[: request.app[BEST_NODES]],
             "FailedNodes": {}, "FailedAndUnresolvableNodes": {}, "Error": ""}  # fmt: skip
    return web.Response(body=orjson.dumps(reply), content_type="application/json")


async def prioritize(request: web.Request) -> web.Response:
    args = orjson.loads(await request.read())
    reply = [{"Host": name, "Score": 0} for name in args.get("NodeNames") or []]
    return web.Response(body=orjson.dumps(reply), content_type="application/json")


async def healthz(_: web.Request) -> web.Response:
    return web.Response(body=b'{"status":"ok"}', content_type="application/json")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--client-ca", required=True)
    parser.add_argument("--best-nodes", type=int, default=8, help="the most names /filter-best passes")
    args = parser.parse_args()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(args.cert, args.key)
    context.load_verify_locations(cafile=args.client_ca)
    context.verify_mode = ssl.CERT_REQUIRED
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/filter", filter_)
    app[BEST_NODES] = args.best_nodes
    app.router.add_post("/filter-best", filter_best)
    app.router.add_post("/prioritize", prioritize)
    app.router.add_get("/readyz", healthz)

    async def serve() -> None:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", args.port, ssl_context=context).start()
        await asyncio.Event().wait()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
