"""Run a blocking call on a daemon thread and await its result.

For the API-server calls: asyncio.to_thread uses the loop's executor, whose threads the interpreter joins at
exit, so one request hanging until its socket timeout would hold the process after SIGTERM. A daemon thread
does not; its caller has already given up on it by then (the waits around these calls are bounded).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


async def in_daemon_thread(function: Callable[..., T], *args: Any) -> T:
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if future.done():  # the caller was cancelled meanwhile
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def work() -> None:
        result: Any = None
        error: BaseException | None = None
        try:
            result = function(*args)
        except BaseException as caught:  # handed to the awaiting task, which decides
            error = caught
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody is waiting any more
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=work, name=getattr(function, "__name__", "blocking-call"), daemon=True).start()
    return await future
