"""The sidecar's admin read API (DLQ and quarantine) against a running worker process.

Token-guarded like POST /admin/drain: absent (404) without ETL_ADMIN_TOKEN, 401 with a
missing or wrong token. JSON only, user ids masked, nothing taken from the DLQ.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping

import orjson
import pytest

from etl_engine.runtime.sidecar import Sidecar
from helpers import (
    WorkerProcess,
    publish,
    queue_counts,
    sample_files,
    upload,
    upload_bytes,
    wait_outcomes,
)
from test_sidecar import TOKEN, call, healthy_state

pytestmark = [pytest.mark.usefixtures("clean_topology")]


def _doc(answer: tuple[int, dict[str, str], bytes]) -> dict[str, object]:
    status, headers, body = answer
    assert headers["Content-Type"] == "application/json", (status, body)
    doc = orjson.loads(body)
    assert isinstance(doc, dict)
    return doc


@pytest.mark.integration
async def test_dlq_stats_and_listing_from_a_running_worker(settings, test_env, tmp_path
                                                           ) -> None:  # type: ignore[no-untyped-def]
    rt, path = sample_files()[0]
    bodies = []
    for i in range(3):
        u = upload(settings, rt, path)
        # a publisher put the user id into its message id: the listing must mask it there
        bodies.append({**u.message(), "bucket": "not-ours",
                       "message_id": f"{u.message()['user_id']}-m{i}"})
    missing = {**upload(settings, rt, path).message(), "message_id": "m-missing"}
    del missing["user_id"]
    w = WorkerProcess(test_env, tmp_path / "w.log", ETL_ADMIN_TOKEN=TOKEN)
    try:
        await w.wait_ready()
        await publish(settings, *bodies, missing)
        await wait_outcomes(settings, [b["message_id"] for b in [*bodies, missing]])

        assert (await call(w.port, "/admin/dlq/stats"))[0] == 401
        assert (await call(w.port, "/admin/dlq/stats", token="x" * 40))[0] == 401
        assert (await call(w.port, "/admin/dlq/stats", "POST", token=TOKEN))[0] == 405
        stats = _doc(await call(w.port, "/admin/dlq/stats", token=TOKEN))
        assert stats["depth"] == 4 and stats["scanned"] == 4 and stats["complete"] is True
        assert stats["readable"] is True
        assert stats["by_reason"] == {"bucket_not_allowed": 3, "missing_field": 1}
        assert isinstance(stats["oldest_age_s"], float) and 0 <= stats["oldest_age_s"] < 120

        status, _, body = await call(w.port, "/admin/dlq?limit=2", token=TOKEN)
        listing = orjson.loads(body)
        assert status == 200 and listing["depth"] == 4 and listing["shown"] == 2
        assert {i["reason"] for i in listing["items"]} <= {"bucket_not_allowed",
                                                            "missing_field"}
        for b in bodies:
            assert b["user_id"].encode() not in body, "user ids are masked"
        assert b"hash:" in body  # ... as the keyed pseudonym the CLI prints
        everything = _doc(await call(w.port, "/admin/dlq", token=TOKEN))
        assert everything["shown"] == 4  # the default limit (50) covers them
        for bad in ("0", "201", "-1", "lots"):
            status, _, body = await call(w.port, f"/admin/dlq?limit={bad}", token=TOKEN)
            assert status == 400 and b"limit" in body
        # looking took nothing: the four are still there
        assert (await queue_counts(settings, settings.dlq_name))[0] == 4
    finally:
        w.kill()


@pytest.mark.integration
async def test_quarantine_stats_from_a_running_worker(settings, test_env, tmp_path
                                                      ) -> None:  # type: ignore[no-untyped-def]
    bad = [upload_bytes(settings, "StepsRecord", f"garbage-{i}.avro", os.urandom(2048))
           for i in range(2)]
    rt, path = sample_files()[0]
    good = upload(settings, rt, path)
    w = WorkerProcess(test_env, tmp_path / "w.log", ETL_ADMIN_TOKEN=TOKEN)
    try:
        await w.wait_ready()
        await publish(settings, *[u.message() for u in bad], good.message())
        outcomes = await wait_outcomes(settings, [u.message_id for u in [*bad, good]])
        assert sorted(outcomes.values()) == ["processed", "quarantined", "quarantined"]
        doc = _doc(await call(w.port, "/admin/quarantine/stats?hours=1", token=TOKEN))
        assert doc["window_hours"] == 1 and doc["total"] == 2 and doc["complete"] is True
        assert doc["by_reason"] == {"not_avro": 2}
        assert doc["by_record_type"] == {"StepsRecord": 2}
        assert doc["by_reason_and_record_type"] == [
            {"reason": "not_avro", "record_type": "StepsRecord", "count": 2}]
        text = orjson.dumps(doc)
        for u in bad:
            assert u.key.encode() not in text and u.idempotency_key.encode() not in text
        assert _doc(await call(w.port, "/admin/quarantine/stats", token=TOKEN))[
            "window_hours"] == 24
        for hours in ("0", "721", "x"):
            status, _, _ = await call(w.port, f"/admin/quarantine/stats?hours={hours}",
                                      token=TOKEN)
            assert status == 400
    finally:
        w.kill()


@pytest.mark.integration
async def test_without_a_token_the_admin_reads_are_absent(settings, test_env, tmp_path
                                                          ) -> None:  # type: ignore[no-untyped-def]
    w = WorkerProcess(test_env, tmp_path / "w.log", ETL_ADMIN_TOKEN="")
    try:
        await w.wait_ready()
        for path in ("/admin/dlq/stats", "/admin/dlq?limit=1", "/admin/quarantine/stats"):
            for token in (None, TOKEN):
                assert (await call(w.port, path, token=token))[0] == 404, path
        assert (await call(w.port, "/admin/config/reload", "POST", token=TOKEN))[0] == 404
    finally:
        w.kill()


# --- the routing, without services -----------------------------------------------------------
async def test_reads_get_the_query_and_answers_are_cached() -> None:
    from etl_engine.runtime import admin

    seen: list[Mapping[str, str]] = []

    async def read(query: Mapping[str, str]) -> tuple[int, str, bytes]:
        seen.append(dict(query))
        return 200, "application/json", b'{"ok": true}'

    car = Sidecar(healthy_state(), host="127.0.0.1", port=0, admin_token=TOKEN,
                  admin_reads={"/admin/thing": read})
    await car.start()
    try:
        assert (await call(car.port, "/admin/thing?a=1&b=two", token=TOKEN))[0] == 200
        assert seen == [{"a": "1", "b": "two"}]
        assert (await call(car.port, "/admin/thing", "POST", token=TOKEN))[0] == 405
        car.set_admin_token("")  # rotated away: the admin routes are gone
        assert (await call(car.port, "/admin/thing", token=TOKEN))[0] == 404
    finally:
        await car.stop()

    calls = 0

    async def slow() -> tuple[int, str, bytes]:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        return 200, "application/json", b"{}"

    reads = admin.AdminReads.__new__(admin.AdminReads)
    reads._cache, reads._running = {}, {}
    answers = await asyncio.gather(*[reads._cached(("k", 0), "dlq", slow) for _ in range(5)])
    assert calls == 1 and len(answers) == 5, "concurrent requests share one read"
    await reads._cached(("k", 0), "dlq", slow)
    assert calls == 1, "answered from the cache"


async def test_dlq_bodies_are_parsed_off_the_event_loop(monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    """Up to 1,000 bodies parsed and masked: on the parse thread, while the loop (probes,
    heartbeats, acks) keeps running."""
    import threading
    import time

    from etl_engine.runtime import admin

    threads: list[int] = []

    def describe(message: object) -> str:
        threads.append(threading.get_ident())
        time.sleep(0.01)  # CPU work, as a big body's JSON parse
        return f"row {message}"

    monkeypatch.setattr(admin.reads, "describe", describe)
    reads = admin.AdminReads.__new__(admin.AdminReads)
    reads._parse = admin.ThreadPoolExecutor(max_workers=1)
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.005)

    ticker = asyncio.create_task(tick())
    try:
        rows = await reads._describe(list(range(20)))  # type: ignore[arg-type]
    finally:
        ticker.cancel()
        reads._parse.shutdown()
    assert rows == [f"row {i}" for i in range(20)]
    assert threads and threading.get_ident() not in threads
    assert ticks >= 10, "the event loop ran while the bodies were parsed"
