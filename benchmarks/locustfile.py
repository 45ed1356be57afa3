"""Load test of ``fraud gateway``: users POST random valid transactions, one or 20 at a time.

Each user sends, back to back (no wait: the numbers are the gateway's capacity on this machine),
nine single-transaction requests for every bulk request of 20. Anything but a 202 counts as a
failure. The documents come from ``fraud.tools.gateway_load.random_document`` (every accepted form
of
amount and event time, some with a location), which the tests check the gateway accepts.

Headless run (locust is in the ``load`` extra)::

    .venv/bin/pip install -e '.[load]'
    .venv/bin/fraud broker start --data-dir /tmp/load/broker --port 19092
    .venv/bin/fraud gateway --brokers 127.0.0.1:19092 &          # http://127.0.0.1:8080
    .venv/bin/locust -f benchmarks/locustfile.py --headless -u 50 -r 10 -t 30s \\
        --host http://127.0.0.1:8080
    kill %1; .venv/bin/fraud broker stop --data-dir /tmp/load/broker

Locust prints requests/s and latency percentiles per request name ("single", "bulk[20]") and in
total; ``--csv PREFIX`` also writes them to files. Locust, the gateway and the broker share the
machine's cores, so the figures are a lower bound of what the gateway does alone.
"""

from __future__ import annotations

import json
import random
import time

from locust import FastHttpUser, task

from fraud.tools.gateway_load import random_batch, random_document

BULK_SIZE = 20
HEADERS = {"Content-Type": "application/json"}


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class GatewayUser(FastHttpUser):
    """POSTs to /v1/transactions without pause; 202 is a success, anything else a failure."""

    def on_start(self) -> None:
        self.rng = random.Random()

    def _post(self, body: object, name: str, count: int) -> None:
        with self.client.post(
            "/v1/transactions",
            data=json.dumps(body),
            headers=HEADERS,
            name=name,
            catch_response=True,
        ) as resp:
            if resp.status_code != 202:
                resp.failure(f"{resp.status_code}: {(resp.text or '')[:200]}")
            elif json.loads(resp.text or "{}").get("accepted") != count:
                resp.failure(f"accepted != {count}: {resp.text}")

    @task(9)
    def single(self) -> None:
        self._post(random_document(self.rng, now_ms()), "single", 1)

    @task(1)
    def bulk(self) -> None:
        self._post(random_batch(self.rng, now_ms(), BULK_SIZE), f"bulk[{BULK_SIZE}]", BULK_SIZE)
