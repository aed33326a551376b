"""Resource limits against a real worker: files built to stall its event loop (a million
empty Avro blocks, a million 19-byte blocks) or to fill its memory (snappy and zstandard
bombs, which the pre-scan used to count compressed) are quarantined with a precise reason
while good inputs published alongside are processed; the worker stays live throughout
(``/live`` polled from outside, and its own ``etl_event_loop_lag_seconds``), its process
tree stays under 400 MiB, and its sidecar keeps answering under 1,000 idle connections.

Run by ``scripts/chaos.sh`` (marked ``chaos``: the plain ``pytest`` run skips it).
"""

from __future__ import annotations

import asyncio
import functools
import socket
import threading
import time
import uuid
import zlib
from pathlib import Path
from typing import Any

import cramjam
import pytest
from prometheus_client.parser import text_string_to_metric_families

from chaos.conftest import chaos as chaos  # the chaos suite's fixture (fleet, ledger)
from chaos.corpus import RssMonitor, block, clean_schema, header
from chaos.harness import Chaos, descendants
from etl_engine.adapters.publisher import Publisher
from etl_engine.domain.avro import _zstd

pytestmark = [pytest.mark.chaos, pytest.mark.security]

MAX_DECOMPRESSED = 64 << 20  # ETL_MAX_DECOMPRESSED_BYTES for the scenario
RSS_LIMIT_MIB = 400
STALL_LIMIT_S = 1.0
IDLE_CONNECTIONS = 1_000


def _snappy(raw: bytes) -> bytes:
    """An Avro snappy block: raw snappy plus the CRC32 of the data, big-endian."""
    return bytes(cramjam.snappy.compress_raw(raw)) + zlib.crc32(raw).to_bytes(4, "big")


def _zstd_zeros(size: int, *, sized: bool) -> bytes:
    """``size`` zero bytes as one zstandard frame, with or without the content size."""
    comp = _zstd.ZstdCompressor()
    if sized:
        comp.set_pledged_input_size(size)
    chunk = bytes(1 << 20)
    return b"".join(comp.compress(chunk) for _ in range(size >> 20)) + comp.flush()


@functools.cache
def hostile_files() -> list[tuple[str, bytes, str]]:
    """(label, file, reason): each a StepsRecord file for the pre-scan to refuse."""
    schema = clean_schema("StepsRecord")
    plain, snappy, zstd = header(schema), header(schema, codec="snappy"), header(
        schema, codec="zstandard")
    unsized = _zstd_zeros(1 << 30, sized=False)
    return [
        ("empty_blocks_1m", plain + block(0, b"") * 1_000_000, "empty_blocks"),
        ("tiny_blocks_1m", plain + block(1, b"\x00") * 1_000_000, "too_many_blocks"),
        ("snappy_bomb_128mib", snappy + block(1, _snappy(bytes(16 << 20))) * 8,
         "decompression_limit_exceeded"),
        ("snappy_claims_4gib", snappy + block(1, b"\xff\xff\xff\xff\x0f" + bytes(8)),
         "decompression_limit_exceeded"),
        ("zstd_sized_1gib", zstd + block(1, _zstd_zeros(1 << 30, sized=True)),
         "decompression_limit_exceeded"),
        ("zstd_unsized_1gib", zstd + block(1, unsized), "decompression_limit_exceeded"),
        ("zstd_bomb_in_second_frame", zstd + block(1, _zstd.compress(b"x") + unsized),
         "decompression_limit_exceeded"),
    ]


class LivePoller(threading.Thread):
    """GETs /live every 50 ms from outside the worker; keeps the slowest answer."""

    def __init__(self, get: Any) -> None:
        super().__init__(daemon=True)
        self._get = get
        self._stop_event = threading.Event()
        self.slowest_s = 0.0
        self.failures = 0
        self.polls = 0

    def run(self) -> None:
        while not self._stop_event.is_set():
            t0 = time.monotonic()
            try:
                ok = self._get("/live")[0] == 200
            except OSError:
                ok = False
            self.slowest_s = max(self.slowest_s, time.monotonic() - t0)
            self.failures += not ok
            self.polls += 1
            self._stop_event.wait(0.05)

    def stop(self) -> dict[str, Any]:
        self._stop_event.set()
        self.join(5)
        return {"live_polls": self.polls, "live_failures": self.failures,
                "live_slowest_s": round(self.slowest_s, 3)}


def loop_lag(metrics_text: str) -> tuple[float, float]:
    """(observations, observations over STALL_LIMIT_S) of etl_event_loop_lag_seconds."""
    total = within = 0.0
    for family in text_string_to_metric_families(metrics_text):
        if family.name != "etl_event_loop_lag_seconds":
            continue
        for sample in family.samples:
            if sample.name.endswith("_count"):
                total = sample.value
            elif sample.name.endswith("_bucket") and float(sample.labels["le"]) == STALL_LIMIT_S:
                within = sample.value
    return total, total - within


async def publish_interleaved(chaos: Chaos, controls: list[dict[str, Any]]) -> int:
    """Every hostile file, with a good input before each (and the rest after)."""
    plan = []
    for label, data, reason in hostile_files():
        up = chaos.upload_bytes("StepsRecord", f"sec-{label}.avro", data)
        plan.append((up.message(), label, reason, str(uuid.uuid4())))
    async with Publisher(chaos.settings) as pub:
        for i, (body, label, reason, mid) in enumerate(plan):
            chaos.ledger.add(controls[i])
            await pub.publish(controls[i])
            chaos.ledger.add(body, expect="quarantined", reason=reason, label=label,
                             message_id=mid, input_id=label)
            await pub.publish(body, routing="health.processing.stepsrecord.normal",
                              message_id=mid)
        for control in controls[len(plan):]:
            chaos.ledger.add(control)
            await pub.publish(control)
    return len(plan)


async def idle_connection_flood(chaos: Chaos, port: int, pid: int) -> dict[str, Any]:
    """Hold IDLE_CONNECTIONS silent sockets to the sidecar; /live and /metrics must still
    answer promptly, and the worker must not hold them all (bounded: ten probe rounds)."""
    worker = chaos.fleet.workers["w"]
    socks: list[socket.socket] = []
    slowest = 0.0
    try:
        for _ in range(IDLE_CONNECTIONS):
            socks.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        await asyncio.sleep(0.2)
        fds = len(list(Path(f"/proc/{pid}/fd").iterdir()))
        for _ in range(10):
            for path in ("/live", "/metrics"):
                t0 = time.monotonic()
                status, _ = await asyncio.to_thread(worker.get, path)
                slowest = max(slowest, time.monotonic() - t0)
                assert status == 200, path
            await asyncio.sleep(0.05)
    finally:
        for s in socks:
            s.close()
    return {"idle_connections": IDLE_CONNECTIONS, "probe_slowest_s": round(slowest, 3),
            "worker_fds_under_flood": fds}


@pytest.mark.parametrize("processes", ["0", "1"])
async def test_resource_limits(chaos: Chaos, processes: str) -> None:
    hostile_files()  # built before the clock starts (the zstandard bombs take a second)
    chaos.setup(ETL_DECODE_PROCESSES=processes, ETL_CONCURRENCY="4",
                ETL_MAX_DECOMPRESSED_BYTES=str(MAX_DECOMPRESSED),
                ETL_MAX_OBJECT_BYTES=str(64 << 20), ETL_SIDECAR_MAX_CONNECTIONS="64")
    good = chaos.upload_samples(max_bytes=8_000)
    controls = chaos.bodies(good, 10, prefix=f"control-{uuid.uuid4().hex[:6]}")
    worker = await chaos.fleet.up("w")
    monitor = RssMonitor(worker.proc.pid, descendants)
    poller = LivePoller(worker.get)
    monitor.start()
    poller.start()
    chaos.mark_start()
    cases = await publish_interleaved(chaos, controls)
    await chaos.ledger.drain(180)
    _, text = await asyncio.to_thread(worker.get, "/metrics")
    lag_count, lag_over = loop_lag(text.decode())
    # the /live poller stops before the flood: 1,000 connects fill the listen backlog, and a
    # connect then waits for TCP's 1 s SYN retry, which is the kernel's doing, not a stall
    # (the flood has its own probes)
    live = poller.stop()
    flood = await idle_connection_flood(chaos, worker.port, worker.proc.pid)
    alive = worker.proc.poll() is None
    memory = monitor.stop()
    chaos.figures.update({**memory, **live, **flood, "cases": cases,
                          "decode_processes": int(processes),
                          "loop_lag_observations": lag_count,
                          "loop_lag_over_1s": lag_over, "worker_alive": alive})
    await chaos.finish()  # every control processed, every case quarantined with its reason
    assert alive
    assert live["live_failures"] == 0 and live["live_slowest_s"] < STALL_LIMIT_S, live
    assert lag_count > 0 and lag_over == 0, (lag_count, lag_over)
    assert flood["probe_slowest_s"] < STALL_LIMIT_S, flood
    assert flood["worker_fds_under_flood"] < IDLE_CONNECTIONS // 2, flood
    assert memory["peak_total_rss_mib"] < RSS_LIMIT_MIB, memory
