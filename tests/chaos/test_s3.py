"""Fault class 7: the object store cut, blackholed, killed and restarted, slowed, and cut
mid-download — all through a proxy in front of the test's S3 server.

moto keeps its objects in memory, so killing the server itself would lose the inputs;
what is killed and restarted here is the network path (the proxy), which is what a
worker sees of an S3 outage anyway.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from faultproxy import FaultProxy

from .harness import Chaos, scale

pytestmark = pytest.mark.chaos

# Retries that outlast a ~10 s outage (defaults: 1 s, 5 s, 30 s and 4 attempts).
OUTAGE_ENV = {"ETL_S3_READ_TIMEOUT_S": "2", "ETL_S3_CONNECT_TIMEOUT_S": "1",
              "ETL_MAX_ATTEMPTS": "8", "ETL_RETRY_DELAYS_MS": "500,1000,2000"}


@pytest.fixture
def s3_proxy(s3_endpoint: str) -> Iterator[FaultProxy]:
    proxy = FaultProxy("127.0.0.1", int(s3_endpoint.rsplit(":", 1)[1]))
    yield proxy
    proxy.close()


def _via(proxy: FaultProxy) -> str:
    return f"http://127.0.0.1:{proxy.port}"


async def _processed(chaos: Chaos, at_least: int, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while sum(int(chaos.fleet.health(w).get("processed") or 0)
              for w in chaos.fleet.workers.values()) < at_least:
        assert time.monotonic() < deadline, "workers are not processing"
        await asyncio.sleep(0.1)


async def test_s3_cut_and_blackholed(chaos: Chaos, s3_proxy: FaultProxy) -> None:
    chaos.setup(**OUTAGE_ENV)
    n = scale(200, 1500)
    bodies = chaos.bodies(chaos.upload_samples(max_bytes=8_000), n)
    await chaos.fleet.up("a", ETL_S3_ENDPOINT_URL=_via(s3_proxy))
    await chaos.fleet.up("b", ETL_S3_ENDPOINT_URL=_via(s3_proxy))
    chaos.mark_start()
    await chaos.publish(bodies)
    await _processed(chaos, n // 5)
    s3_proxy.refuse = True  # cut: every connection reset, new ones refused for 3 s
    s3_proxy.reset_all()
    chaos.faults += 1
    await asyncio.sleep(3.0)
    s3_proxy.refuse = False
    await _processed(chaos, n // 2)
    s3_proxy.blackhole = True  # silent: requests vanish, only timeouts notice
    chaos.faults += 1
    await asyncio.sleep(4.0)
    s3_proxy.blackhole = False
    healed = time.monotonic()
    await chaos.finish(drain_timeout=180)
    chaos.amend(drain_after_heal_s=round(time.monotonic() - healed, 2))


async def test_s3_path_killed_and_restarted(chaos: Chaos, s3_proxy: FaultProxy) -> None:
    chaos.setup(**OUTAGE_ENV)
    n = scale(200, 1000)
    bodies = chaos.bodies(chaos.upload_samples(max_bytes=8_000), n)
    await chaos.fleet.up("a", ETL_S3_ENDPOINT_URL=_via(s3_proxy))
    chaos.mark_start()
    await chaos.publish(bodies)
    await _processed(chaos, n // 4)
    s3_proxy.stop()  # the endpoint is gone: connection refused
    chaos.faults += 1
    await asyncio.sleep(4.0)
    s3_proxy.start()
    chaos.figures["endpoint_down_s"] = 4.0
    await chaos.finish(drain_timeout=180)


async def test_s3_slowed_by_five_seconds(chaos: Chaos, s3_proxy: FaultProxy) -> None:
    chaos.setup(ETL_CONCURRENCY="8")
    bodies = chaos.bodies(chaos.upload_samples(max_bytes=4_500), scale(8, 32))
    s3_proxy.latency_s = 5.0  # on every response chunk: each S3 call waits >= 5 s
    s3_proxy.latency_upstream = False
    chaos.faults += 1
    await chaos.fleet.up("a", ETL_S3_ENDPOINT_URL=_via(s3_proxy))
    chaos.mark_start()
    await chaos.publish(bodies)
    verdict = await chaos.finish(drain_timeout=240)
    assert verdict.counts["processed"] == len(bodies)


async def test_s3_cut_mid_download(chaos: Chaos, s3_proxy: FaultProxy) -> None:
    chaos.setup(**OUTAGE_ENV)
    uploads = [u for u in chaos.upload_samples(max_bytes=40_000) if u.size > 20_000]
    bodies = chaos.bodies(uploads, scale(40, 200))
    s3_proxy.close_after_bytes = 4_000  # mid-body: the files are 20-40 kB
    s3_proxy.cuts_left = 10
    await chaos.fleet.up("a", ETL_S3_ENDPOINT_URL=_via(s3_proxy))
    chaos.mark_start()
    await chaos.publish(bodies)
    chaos.figures["cut_after_bytes"] = s3_proxy.close_after_bytes
    chaos.fault_counters.append(lambda: s3_proxy.cuts)
    verdict = await chaos.finish(drain_timeout=120)
    assert s3_proxy.cuts > 0
    assert verdict.counts["processed"] == len(bodies), "a cut download is retried, not judged"
