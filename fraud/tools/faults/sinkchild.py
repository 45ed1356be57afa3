"""The webhook sink of scenario 5 as its own process: ``fraud webhooks`` with the retry
schedule and breaker reset of the scenario (the command line keeps the production schedule,
1 s to 10 min, which would make a one-minute outage a quarter-hour run).

    python -m fraud.tools.faults.sinkchild --subscriptions FILE --retry-delays 1,10,30,120
        --breaker-reset-s 15 --ready-file PATH [--brokers B --topic-prefix P --app-id A]

Writes ``--ready-file`` once every consumer has its partitions; stops on SIGTERM like the
command.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from pathlib import Path

from fraud.serve import run_until_signalled
from fraud.settings import Settings
from fraud.sinks.retry import RetryPolicy
from fraud.sinks.webhooks.service import run_webhooks


def parse_delays(text: str) -> tuple[float, ...]:
    return tuple(float(part) for part in text.split(",") if part.strip())


class _Child:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.settings = Settings.from_env().with_overrides(
            brokers=args.brokers, topic_prefix=args.topic_prefix, partitions=args.partitions,
            app_id=args.app_id,
        )  # fmt: skip

    async def run(self, stop: asyncio.Event) -> None:
        ready = asyncio.Event()
        marker = asyncio.create_task(self._mark_ready(ready))
        try:
            await run_webhooks(
                self.settings, self.args.subscriptions, stop=stop, ready=ready,
                policy=RetryPolicy(delays=parse_delays(self.args.retry_delays)),
                breaker_reset_s=self.args.breaker_reset_s, reload_interval_s=0.5,
            )  # fmt: skip
        finally:
            marker.cancel()

    async def _mark_ready(self, ready: asyncio.Event) -> None:
        await ready.wait()
        self.args.ready_file.write_text("ready\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscriptions", type=Path, required=True)
    parser.add_argument("--retry-delays", default="1,10,30,120")
    parser.add_argument("--breaker-reset-s", type=float, default=15.0)
    parser.add_argument("--ready-file", type=Path, required=True)
    parser.add_argument("--brokers")
    parser.add_argument("--topic-prefix")
    parser.add_argument("--partitions", type=int)
    parser.add_argument("--app-id")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    run_until_signalled(_Child(args).run)


if __name__ == "__main__":
    main()
