"""Issue 15, hole 3: a second run must not flip an input's outcome.

One worker runs six minutes behind (libfaketime, Debian package ``faketime``), the other
on the real clock. The file's records start a minute or two after the upload: within the
allowed future skew (``ETL_MAX_FUTURE_SKEW_S``, 5 min) for the right clock, "in the
future" for the late one, so the two workers' verdicts differ (processed vs quarantined).
The input is published twice; the late worker takes the first copy and is frozen
(SIGSTOP) past its 1 s lease, the other worker settles the second copy; the late one is
resumed (SIGCONT); then the test's own dedup keys are flushed and the input published
twice more, once while only the late worker consumes. One outcome must stand throughout.
"""

from __future__ import annotations

import asyncio
import io
import os
import signal
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import fastavro
import pytest
import redis.asyncio as aioredis

from etl_engine.domain.lineage import pseudonymous
from etl_engine.domain.model import DomainConfig
from etl_engine.runtime.compute import Limits, run_cpu_stages
from faultproxy import FaultProxy

from .corpus import clean_schema, sample_records
from .harness import Chaos
from .services import faketime_env, redis_flush_prefix

pytestmark = pytest.mark.chaos
BEHIND = "-6m"
EITHER = ("processed", "quarantined")  # which one depends on who decides first: one only


def near_now_steps(records: int = 20) -> bytes:
    """A StepsRecord export whose records start 60-100 s from now and were fetched 120 s
    from now: valid against the upload time plus 5 min of skew, "in the future" for a
    clock six minutes late (whose ceiling is its own now)."""
    now = int(time.time() * 1000)
    template = sample_records("StepsRecord")[:records]
    out = []
    for i, rec in enumerate(template):
        start = now + 60_000 + i * 2_000
        out.append({**rec, "metadata": {**rec["metadata"], "id": str(uuid.uuid4())},
                    "startTimeEpochMillis": start, "endTimeEpochMillis": start + 1_000,
                    "appRecordFetchTimeEpochMillis": now + 120_000})
    buf = io.BytesIO()
    fastavro.writer(buf, fastavro.parse_schema(clean_schema("StepsRecord")), out)
    return buf.getvalue()


async def _until(predicate: Any, timeout: float, what: str) -> float:
    start = time.monotonic()
    while not await predicate():
        assert time.monotonic() - start < timeout, f"timed out: {what}"
        await asyncio.sleep(0.05)
    return time.monotonic() - start


def _late_env() -> dict[str, str]:
    env = faketime_env(BEHIND)
    if env is None:
        if os.environ.get("CI") == "true":
            pytest.fail("libfaketime is not installed (Debian package faketime): .ci/run "
                        "installs it")
        pytest.skip("libfaketime is not installed (apt-get install faketime)")
    return env


def verdict_at(data: bytes, clock: datetime) -> str | None:
    """The worker's CPU stages on ``data`` with its clock at ``clock`` and the upload stamped
    by that clock: None when it gives a result, else the quarantine reason."""
    lineage = pseudonymous(b"k", bucket="b", key="raw/StepsRecord/x.avro",
                           record_type="StepsRecord", idempotency_key="ik", user_id="u",
                           message_id="m", correlation_id="c",
                           upload_timestamp_utc=clock.isoformat())
    result = run_cpu_stages(data, lineage, Limits(10**6, 1 << 30), DomainConfig(), clock)
    return None if result.output is not None else result.quarantine_reason


def test_the_two_clocks_disagree_about_the_file() -> None:
    """The scenario's premise, checked: right clock -> a result; six minutes late -> none."""
    data = near_now_steps()
    now = datetime.now(UTC)
    assert verdict_at(data, now) is None
    assert verdict_at(data, now - timedelta(minutes=6)) is not None


async def test_clock_skew_lease_expiry_and_flush_keep_one_outcome(chaos: Chaos) -> None:
    late_env = _late_env()
    s = chaos.setup(ETL_LEASE_TTL_S="1", ETL_CONCURRENCY="1")
    data = near_now_steps()
    now = datetime.now(UTC)
    assert verdict_at(data, now) is None  # the verdicts differ (the premise)
    assert verdict_at(data, now - timedelta(minutes=6)) is not None
    upload = chaos.upload_bytes("StepsRecord", "near-now.avro", data)
    copies = [{**upload.message(), "message_id": str(uuid.uuid4())} for _ in range(4)]
    proxy = FaultProxy("127.0.0.1", int(s.s3_endpoint_url.rsplit(":", 1)[1]))
    r = aioredis.Redis.from_url(s.dedup_url)
    lease = f"{s.dedup_prefix}:lease:{upload.idempotency_key}"
    try:
        proxy.latency_s = 0.3  # the late worker's S3 calls are slow: it holds the lease
        late = await chaos.fleet.up("late", ETL_S3_ENDPOINT_URL=f"http://127.0.0.1:{proxy.port}",
                                    **late_env)
        chaos.mark_start()
        await chaos.publish([copies[0]], expect=EITHER)

        async def leased() -> bool:
            return bool(await r.exists(lease))

        await _until(leased, 30, "the late worker takes the lease")
        chaos.fleet.kill("late", signal.SIGSTOP)
        chaos.faults += 1

        async def expired() -> bool:
            return not await r.exists(lease)

        expiry_s = await _until(expired, 10, "the frozen worker's lease expires")
        right = await chaos.fleet.up("right")
        await chaos.publish([copies[1]], expect=EITHER)
        await _until(lambda: _settled(chaos, right, 1), 30, "the other worker settles copy 2")
        late.signal(signal.SIGCONT)
        await _until(lambda: _settled(chaos, late, 1), 60, "the late worker settles copy 1")
        flushed = redis_flush_prefix(s.dedup_url, s.dedup_prefix)  # done marker gone
        chaos.faults += 1
        right.signal(signal.SIGSTOP)  # copy 3 goes to the late worker
        await chaos.publish([copies[2]], expect=EITHER)
        await _until(lambda: _settled(chaos, late, 2), 60, "the late worker settles copy 3")
        right.signal(signal.SIGCONT)
        await chaos.publish([copies[3]], expect=EITHER)
        chaos.figures.update({"clock_offset": BEHIND, "lease_ttl_s": 1,
                              "lease_expired_after_stop_s": round(expiry_s, 2),
                              "dedup_keys_flushed": flushed,
                              "late_worker": _outcomes(chaos, late),
                              "right_worker": _outcomes(chaos, right)})
        verdict = await chaos.finish(outcomes=False, drain_timeout=90)
        assert verdict.counts["processed"] + verdict.counts["quarantined"] == 1
    finally:
        proxy.close()
        await r.aclose()


def _outcomes(chaos: Chaos, worker: Any) -> list[str]:
    return [str(e.get("outcome")) for e in chaos.fleet.events("message_settled", worker=worker)]


async def _settled(chaos: Chaos, worker: Any, n: int) -> bool:
    """The worker's log has ``n`` final settlements (only to pace the steps; the verdict
    is the ledger's, from S3 and the broker)."""
    final = {"processed", "duplicate", "quarantined", "dead_letter"}
    return sum(o in final for o in _outcomes(chaos, worker)) >= n
