"""Run a service's coroutine (a sink, the gateway) until SIGTERM or SIGINT asks it to stop."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable


def run_until_signalled(sink: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """``asyncio.run`` the sink with a stop event that SIGTERM and SIGINT set."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await sink(stop)
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)

    asyncio.run(main())
