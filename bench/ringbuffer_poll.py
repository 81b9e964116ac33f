"""CPU cost of one poll of the kernel ring buffer (plugin/ringbuffer.py) on this machine, against the bare
syslog(2) call it makes and against following an idle file (the file source's poll), measured in the same run.

    python bench/ringbuffer_poll.py [--reads 2000]

Figures are user + system CPU per read (getrusage), so time spent in the kernel formatting the ring counts.
The plugin reads the ring once a second (POLL_INTERVAL_SECONDS); the last line turns the idle cost into a share
of one core. A "burst" read finds 200 new records (about 20 KiB) after the anchor, as during a kernel-log flood.
Needs CAP_SYSLOG (root) for the real ring; the in-memory ring shows the reader's own cost on a full 1 MiB ring.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from plugin.hwerrors import LineFollower  # noqa: E402
from plugin.ringbuffer import POLL_INTERVAL_SECONDS, WINDOW_BYTES, RingBufferReader, SyslogCall  # noqa: E402


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def per_call(call: Callable[[], object], reads: int) -> float:
    """Microseconds of CPU per call."""
    for _ in range(min(reads, 50)):  # warm up
        call()
    started = cpu_seconds()
    for _ in range(reads):
        call()
    return (cpu_seconds() - started) / reads * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reads", type=int, default=2000)
    args = parser.parse_args()

    with tempfile.NamedTemporaryFile() as idle:
        follower = LineFollower(idle.name)
        file_us = per_call(follower.read, args.reads)
        follower.close()
    print(f"idle file follow (LineFollower.read):           {file_us:8.1f} us CPU per read")

    try:
        call = SyslogCall()
        ring_size = call.buffer_size()
        call.read_all(64)
    except OSError as error:
        print(f"real ring buffer: not readable here ({error.strerror}); run as root", file=sys.stderr)
    else:
        bare_us = per_call(lambda: call.read_all(WINDOW_BYTES), args.reads)
        reader = RingBufferReader()
        reader.read()
        idle_us = per_call(reader.read, args.reads)
        print(f"real ring ({ring_size // 1024} KiB): bare syslog(2) READ_ALL {WINDOW_BYTES // 1024} KiB: "
              f"{bare_us:8.1f} us CPU per call")  # fmt: skip
        print(f"real ring ({ring_size // 1024} KiB): RingBufferReader.read, idle:    {idle_us:8.1f} us CPU per read "
              f"({idle_us / bare_us:.2f}x the bare call, {idle_us / file_us:.1f}x an idle file)")  # fmt: skip
        share = idle_us / 1e6 / POLL_INTERVAL_SECONDS * 100
        print(f"  at one read per {POLL_INTERVAL_SECONDS:.0f} s: {share:.3f}% of one core")

    ring = BytesRing(1 << 20)
    ring.append(b"".join(b"<6>[%5d.%06d] filler line %d %s\n" % (i, i, i, b"x" * 60) for i in range(14_000)))
    reader = RingBufferReader(ring)
    reader.read()
    idle_fake_us = per_call(reader.read, args.reads)
    serial = [0]

    def burst() -> None:
        serial[0] += 1
        ring.append(b"".join(b"<3>[%5d.%06d] burst %d %s\n" % (serial[0], i, i, b"y" * 80) for i in range(200)))

    burst_only_us = per_call(burst, max(args.reads // 10, 50))
    burst_us = per_call(lambda: (burst(), reader.read()), max(args.reads // 10, 50)) - burst_only_us
    print(f"in-memory 1 MiB ring (reader cost only): idle read {idle_fake_us:8.1f} us; "
          f"read after a 200-record burst {burst_us:8.1f} us")  # fmt: skip
    return 0


class BytesRing:
    """A full ring buffer as bytes, for the reader's own cost (no kernel): READ_ALL returns the newest lines."""

    def __init__(self, capacity: int) -> None:
        self.capacity, self.data = capacity, b""

    def append(self, lines: bytes) -> None:
        data = self.data + lines
        if len(data) > self.capacity:
            data = data[data.index(b"\n", len(data) - self.capacity) + 1 :]
        self.data = data

    def buffer_size(self) -> int:
        return self.capacity

    def read_all(self, size: int) -> bytes:
        if len(self.data) <= size:
            return self.data
        return self.data[self.data.index(b"\n", len(self.data) - size - 1) + 1 :]


if __name__ == "__main__":
    raise SystemExit(main())
