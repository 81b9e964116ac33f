"""Runs `neuron-scheduler-extender` with a probe of its event loop's lag, for the benches (not a product flag).

    python bench/looplag.py --out FILE [--tree DIR] -- /path/to/neuron-scheduler-extender --flag=value ...

A task on the extender's own loop sleeps `--period` seconds at a time and records how late it wakes: how long a
callback that becomes ready (a request's bytes, a watch event) waits for the loop behind others. Once a second
it appends one JSON line to FILE: {"t": CLOCK_MONOTONIC seconds (comparable with the bench's time.monotonic()),
"n": samples, "sum": total lag s, "max": the largest, "over": {"1": samples over 1 ms, "5": ..., "20": ...}}.
`bench/scheduler_throughput.py --loop-lag` reads the lines of each run of ours. `--tree DIR` serves the extender
from another source tree (`git archive <commit> extender neuronalloc neuroncli neuronlog | tar -x -C DIR`), to
measure an older commit on the same bench.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

THRESHOLDS_MS = (1, 5, 20)


async def probe(out: Path, period: float) -> None:
    loop = asyncio.get_running_loop()
    with out.open("ab", buffering=0) as sink:
        window_start = loop.time()
        count, total, largest = 0, 0.0, 0.0
        over = dict.fromkeys(map(str, THRESHOLDS_MS), 0)
        while True:
            due = loop.time() + period
            await asyncio.sleep(period)
            lag = max(0.0, loop.time() - due)
            count, total, largest = count + 1, total + lag, max(largest, lag)
            for ms in THRESHOLDS_MS:
                over[str(ms)] += lag * 1000 > ms
            if loop.time() - window_start >= 1.0:
                line = {"t": time.monotonic(), "n": count, "sum": total, "max": largest, "over": over}
                sink.write(orjson.dumps(line) + b"\n")
                window_start = loop.time()
                count, total, largest = 0, 0.0, 0.0
                over = dict.fromkeys(map(str, THRESHOLDS_MS), 0)


def main() -> int:
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--period", type=float, default=0.01)
    parser.add_argument("--tree", default="", help="import the extender from this source tree")
    args = parser.parse_args(argv[:split])
    extender_argv = argv[split + 1 :][1:]  # the executable's path, then its flags
    if args.tree:
        sys.path.insert(0, str(Path(args.tree).resolve()))

    import extender.main as extender_main

    serve = extender_main._serve

    async def serve_with_probe(cfg: Any) -> int:
        task = asyncio.ensure_future(probe(Path(args.out), args.period))
        try:
            return await serve(cfg)
        finally:
            task.cancel()

    extender_main._serve = serve_with_probe  # type: ignore[assignment]
    return extender_main.main(extender_argv)


def read(path: Path, start: float, end: float) -> dict[str, float]:
    """Lag figures between `start` and `end` (monotonic seconds): mean and max in ms, share over each threshold."""
    lines: list[Any] = []
    if path.exists():
        lines = [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
    inside = [line for line in lines if start <= line["t"] <= end + 1.0]
    count = sum(line["n"] for line in inside)
    if not count:
        return {}
    figures = {
        "mean_ms": sum(line["sum"] for line in inside) / count * 1000,
        "max_ms": max(line["max"] for line in inside) * 1000,
    }
    for ms in THRESHOLDS_MS:
        figures[f"over_{ms}ms"] = sum(line["over"][str(ms)] for line in inside) / count
    return figures


if __name__ == "__main__":
    sys.exit(main())
