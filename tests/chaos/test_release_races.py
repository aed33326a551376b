"""Issue 15, hole 4: ``etl-engine quarantine release`` must keep the evidence until the new
outcome exists, and must act only on the fleet's dedup store.

- Run against another dedup store (``ETL_DEDUP_URL`` unset: a fresh local SQLite file; or
  the right Redis under another prefix), it must refuse and keep the copy and the reason
  file untouched: there it would clear nothing, the workers would answer ``duplicate`` and
  the evidence would be gone.
- Run with the cause unfixed and the tool's S3 path slowed (a fault proxy in front of S3
  for the tool only), the worker's new quarantine lands while the tool is still busy: it
  must survive the tool.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

import orjson
import pytest

from faultproxy import FaultProxy

from .harness import Chaos
from .ledger import REASON_SUFFIX, histories

pytestmark = pytest.mark.chaos


async def _release(chaos: Chaos, qkey: str, **env: str | None) -> tuple[int, str]:
    """``etl-engine quarantine release`` as an operator runs it: its own process, the
    test's settings with ``env`` on top (None: unset), in a scratch directory (a default
    SQLite store would be created there)."""
    full = {**os.environ, **chaos.env}
    for k, v in env.items():
        if v is None:
            full.pop(k, None)
        else:
            full[k] = v
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "etl_engine.ops.cli", "quarantine", "release", qkey,
        "--timeout", "60", env=full, cwd=chaos.tmp, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    return int(proc.returncode or 0), out.decode(errors="replace")


def _evidence(chaos: Chaos, ikey: str) -> dict[str, Any]:
    """The input's quarantine objects with their versions: ``{key: (versions, deletes,
    live)}``, and the reason file's key (found by the idempotency key it names)."""
    s = chaos.settings
    pages = chaos.storage.client.get_paginator("list_object_versions").paginate(
        Bucket=s.bucket, Prefix=s.quarantine_prefix)
    found = {}
    for key, h in histories(pages).items():
        if not key.endswith(REASON_SUFFIX) or not h.live:
            continue
        doc = orjson.loads(chaos.storage.get(s.bucket, key))
        if doc.get("idempotency_key") == ikey:
            copy = key.removesuffix(REASON_SUFFIX)
            found = {"reason_key": key, "copy_key": copy, "reason_doc": doc}
    assert found, f"no live reason file names {ikey}"
    pages = chaos.storage.client.get_paginator("list_object_versions").paginate(
        Bucket=s.bucket, Prefix=found["copy_key"])
    found["versions"] = {k: (len(h.versions), h.deletes, h.live)
                         for k, h in histories(pages).items()}
    return found


async def test_release_refuses_another_dedup_store_and_keeps_the_evidence(chaos: Chaos
                                                                         ) -> None:
    s = chaos.setup()
    bad = chaos.upload_bytes("StepsRecord", "not-avro.avro", os.urandom(4096))
    body = {**bad.message(), "message_id": "release-refused"}
    await chaos.fleet.up("w")
    chaos.mark_start()
    await chaos.publish([body], expect="quarantined", reason="not_avro")
    await chaos.ledger.drain(60)
    before = _evidence(chaos, bad.idempotency_key)
    unset_rc, unset_out = await _release(chaos, before["copy_key"], ETL_DEDUP_URL=None)
    other_rc, other_out = await _release(chaos, before["copy_key"],
                                         ETL_DEDUP_PREFIX=f"{s.dedup_prefix}-elsewhere")
    after = _evidence(chaos, bad.idempotency_key)
    chaos.figures.update({"release_without_dedup_url_exit": unset_rc,
                          "release_other_store_exit": other_rc,
                          "evidence_versions": after["versions"]})
    assert unset_rc == 78 and "ETL_DEDUP_URL" in unset_out, unset_out  # EX_CONFIG
    assert other_rc != 0, other_out
    assert after["versions"] == before["versions"], "the evidence was touched"
    assert all(live and n == 1 for n, _, live in after["versions"].values())
    assert await chaos.ledger.ready_count() == 0, "a refused release published"
    await chaos.finish()


async def test_release_with_cause_unfixed_keeps_the_new_quarantine(chaos: Chaos) -> None:
    s = chaos.setup()
    bad = chaos.upload_bytes("StepsRecord", "still-not-avro.avro", os.urandom(4096))
    body = {**bad.message(), "message_id": "release-unfixed"}
    await chaos.fleet.up("w")
    chaos.mark_start()
    await chaos.publish([body], expect="quarantined", reason="not_avro")
    await chaos.ledger.drain(60)
    first = _evidence(chaos, bad.idempotency_key)
    proxy = FaultProxy("127.0.0.1", int(s.s3_endpoint_url.rsplit(":", 1)[1]))
    try:
        proxy.latency_s = 0.3  # the tool's every S3 call is slow; the worker's are not
        chaos.faults += 1
        chaos.ledger.note_release(bad.idempotency_key)
        rc, out = await _release(chaos, first["copy_key"],
                                 ETL_S3_ENDPOINT_URL=f"http://127.0.0.1:{proxy.port}")
    finally:
        proxy.close()
    await chaos.ledger.drain(60)
    now = _evidence(chaos, bad.idempotency_key)
    chaos.figures.update({"release_exit": rc, "release_said": out.strip()[-300:],
                          "evidence_versions": now["versions"]})
    assert rc != 0, f"reported released although the cause is not fixed: {out}"
    assert now["reason_doc"]["quarantined_at"] > first["reason_doc"]["quarantined_at"], \
        "no new quarantine: the released message was not processed again"
    assert all(live for _, _, live in now["versions"].values()), "the new quarantine is gone"
    await chaos.finish()
