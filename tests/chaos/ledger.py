"""The chaos checker: a ledger of every input published, and what became of each one.

Every input is classified from the outside (S3, the broker), never from the worker's
own word:

- processed:     exactly one result object, one version, whose metadata.idempotency_key
                 is the input's (the bucket is versioned, so an overwrite is a 2nd version)
- quarantined:   a ``.reason.json`` for it under ``quarantine/`` (and no result)
- dead_lettered: a message for it in the DLQ with ``x-etl-reason`` or ``x-death``
- duplicated:    more than one result object, or a result object with >1 version
- bad_result:    one result object whose content is not this input's
- lost:          none of these

Pass: lost 0, duplicated 0, bad_result 0, no stray results, the work and retry queues at
0 ready and 0 unacked, and processed + quarantined + dead_lettered == inputs.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import shutil
import subprocess
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import orjson

from etl_engine.adapters.dedup import open_store
from etl_engine.adapters.storage import Storage, make_client
from etl_engine.runtime.pipeline import _SAFE_KEY
from etl_engine.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
RUN_DIR = ROOT / ".run" / "chaos"
CLASSES = ("processed", "quarantined", "dead_lettered", "lost", "duplicated", "bad_result")


def result_name(idempotency_key: str) -> str:
    """The file name the pipeline gives an input's result (see ``pipeline.result_key``)."""
    if _SAFE_KEY.match(idempotency_key):
        return idempotency_key
    return hashlib.sha256(idempotency_key.encode()).hexdigest()


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value) if value is not None else ""


@dataclass
class Entry:
    input_id: str
    ikey: str | None
    expect: str
    reason: tuple[str, ...] | None
    label: str
    message_ids: list[str] = field(default_factory=list)


@dataclass
class DeadLetter:
    message_id: str | None
    reason: str
    ikey: str | None
    body_bytes: int


@dataclass
class Verdict:
    classes: dict[str, str]  # input id -> class
    counts: Counter[str]
    reasons: dict[str, str | None]  # input id -> observed reason code
    mismatches: list[str]
    stray_results: list[str]
    processed_and_dead_lettered: int
    queues: dict[str, tuple[int, int, int]]  # name -> (ready, unacked, consumers)
    outcome_counts: Counter[str]
    inputs: int
    messages: int

    @property
    def queues_empty(self) -> bool:
        return all(r == 0 and u == 0 for r, u, _ in self.queues.values())

    @property
    def passed(self) -> bool:
        c = self.counts
        return (
            c["lost"] == 0 and c["duplicated"] == 0 and c["bad_result"] == 0
            and not self.stray_results and self.queues_empty
            and c["processed"] + c["quarantined"] + c["dead_lettered"] == self.inputs
        )


def broker_queues(names: list[str]) -> dict[str, tuple[int, int, int]] | None:
    """(ready, unacked, consumers) per queue from ``rabbitmqctl``; None without it."""
    ctl = shutil.which("rabbitmqctl")
    if ctl is None:
        return None
    try:
        out = subprocess.run(
            [ctl, "-q", "list_queues", "name", "messages_ready", "messages_unacknowledged",
             "consumers", "--no-table-headers"],
            capture_output=True, text=True, timeout=30, check=True,
        ).stdout
    except (subprocess.SubprocessError, OSError):
        return None
    wanted = set(names)
    found: dict[str, tuple[int, int, int]] = {}
    for line in out.splitlines():
        parts = line.split("\t")
        if len(parts) == 4 and parts[0] in wanted:
            found[parts[0]] = (int(parts[1]), int(parts[2]), int(parts[3]))
    return found


class Ledger:
    def __init__(self, settings: Settings) -> None:
        self.s = settings
        self.storage = Storage(make_client(settings, pool=16))
        self.entries: dict[str, Entry] = {}
        self._by_mid: dict[str, str] = {}
        self._by_ikey: dict[str, str] = {}
        self.dead: list[DeadLetter] = []
        self._reasons: dict[tuple[str, str], dict[str, Any]] = {}
        self._conn: aio_pika.abc.AbstractConnection | None = None
        self.messages = 0
        self.drain_s: float | None = None
        self.drained = False
        self.outcomes: dict[str, str] = {}

    # --- recording ---------------------------------------------------------------------------
    def add(
        self, body: dict[str, Any] | bytes, *, expect: str = "processed",
        reason: str | tuple[str, ...] | None = None, label: str = "",
        message_id: str | None = None, input_id: str | None = None,
    ) -> None:
        """Record one published message (several messages may be the same input)."""
        assert expect in ("processed", "quarantined", "dead_lettered"), expect
        ikey = None
        if isinstance(body, dict) and isinstance(body.get("idempotency_key"), str):
            ikey = body["idempotency_key"]
        mid = message_id or (body.get("message_id") if isinstance(body, dict) else None)
        assert mid, "every ledger message needs a message id"
        iid = input_id or ikey or mid
        entry = self.entries.get(iid)
        if entry is None:
            reasons = (reason,) if isinstance(reason, str) else reason
            entry = Entry(iid, ikey, expect, reasons, label or iid)
            self.entries[iid] = entry
            if ikey is not None:
                self._by_ikey.setdefault(ikey, iid)
        entry.message_ids.append(mid)
        self._by_mid[mid] = iid
        self.messages += 1

    @property
    def message_ids(self) -> list[str]:
        return list(self._by_mid)

    # --- observing ---------------------------------------------------------------------------
    async def _channel(self) -> aio_pika.abc.AbstractChannel:
        if self._conn is None or self._conn.is_closed:
            self._conn = await aio_pika.connect(self.s.amqp_url.get_secret_value(), timeout=10)
        return await self._conn.channel()

    async def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close()
            self._conn = None

    def _queue_names(self) -> list[str]:
        return [self.s.queue] + [self.s.retry_queue_name(t)
                                 for t in range(len(self.s.retry_delays))]

    async def ready_count(self) -> int:
        """Messages ready in the work and retry queues (passive declare)."""
        ch = await self._channel()
        total = 0
        try:
            for name in self._queue_names():
                q = await ch.declare_queue(name, passive=True)
                total += int(q.declaration_result.message_count or 0)
        finally:
            with contextlib.suppress(Exception):
                await ch.close()
        return total

    async def collect_dlq(self) -> None:
        ch = await self._channel()
        try:
            q = await ch.declare_queue(self.s.dlq_name, passive=True)
            while (msg := await q.get(fail=False, no_ack=True)) is not None:
                headers = dict(msg.headers or {})
                reason = _text(headers.get("x-etl-reason"))
                if not reason:
                    deaths = headers.get("x-death") or []
                    reason = _text(headers.get("x-first-death-reason")) or (
                        _text(deaths[0].get("reason")) if deaths else "")
                ikey = None
                with contextlib.suppress(Exception):
                    data = orjson.loads(msg.body)
                    if isinstance(data, dict) and isinstance(data.get("idempotency_key"), str):
                        ikey = data["idempotency_key"]
                self.dead.append(DeadLetter(msg.message_id, reason or "unknown", ikey,
                                            len(msg.body)))
        finally:
            with contextlib.suppress(Exception):
                await ch.close()

    def _scan_s3(self) -> dict[str, list[str]]:
        results: dict[str, list[str]] = defaultdict(list)
        for key in self.storage.list_keys(self.s.bucket, self.s.training_prefix):
            name = key.rsplit("/", 1)[-1].removesuffix(".jsonl")
            results[name].append(key)
        # Every version of every reason file: the quarantine copy is named after the
        # object, so two inputs naming one object share (overwrite) one reason file.
        paginator = self.storage.client.get_paginator("list_object_versions")
        for page in paginator.paginate(Bucket=self.s.bucket, Prefix=self.s.quarantine_prefix):
            for v in page.get("Versions", []):
                ref = (v["Key"], v["VersionId"])
                if not v["Key"].endswith(".reason.json") or ref in self._reasons:
                    continue
                with contextlib.suppress(Exception):
                    resp = self.storage.client.get_object(
                        Bucket=self.s.bucket, Key=ref[0], VersionId=ref[1])
                    self._reasons[ref] = json.loads(resp["Body"].read())
        return results

    @property
    def reason_overwrites(self) -> int:
        """Reason files rewritten for a different input than before."""
        seen: dict[str, set[str]] = defaultdict(set)
        for (key, _), info in self._reasons.items():
            seen[key].add(str(info.get("idempotency_key")))
        return sum(len(v) - 1 for v in seen.values())

    def _entry_for_dead(self, d: DeadLetter) -> str | None:
        if d.message_id and d.message_id in self._by_mid:
            return self._by_mid[d.message_id]
        if d.ikey and d.ikey in self._by_ikey:
            return self._by_ikey[d.ikey]
        return None

    def _quarantined(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for info in self._reasons.values():
            iid = self._by_mid.get(str(info.get("message_id"))) or self._by_ikey.get(
                str(info.get("idempotency_key")))
            if iid is not None:
                out.setdefault(iid, str(info.get("reason")))
        return out

    def _settled(self, results: dict[str, list[str]]) -> set[str]:
        done = {iid for iid, e in self.entries.items()
                if e.ikey is not None and result_name(e.ikey) in results}
        done |= set(self._quarantined())
        done |= {iid for d in self.dead if (iid := self._entry_for_dead(d)) is not None}
        return done

    async def _all_outcomes(self) -> bool:
        """Every message has a final outcome in the dedup store, or is in the DLQ."""
        dead_mids = {d.message_id for d in self.dead}
        missing = [m for m in self._by_mid if m not in self.outcomes and m not in dead_mids]
        if not missing:
            return True
        store = open_store(self.s.dedup_url, self.s.dedup_prefix)
        try:
            for i in range(0, len(missing), 1000):
                self.outcomes.update(await store.outcomes(missing[i:i + 1000]))
        except Exception:
            return False
        finally:
            with contextlib.suppress(Exception):
                await store.close()
        return all(m in self.outcomes or m in dead_mids for m in missing)

    async def drain(self, timeout_s: float, *, outcomes: bool = True,
                    outcome_grace_s: float = 10.0) -> float:
        """Wait until every input has an artifact and the queues are empty (0 unacked).

        ``outcomes``: also wait for every message's final outcome in the dedup store, but
        at most ``outcome_grace_s`` once the broker holds nothing more (a record can be
        missing without anything being wrong with the message: see ``outcomes_missing``).
        Not when the store itself was disrupted: its records are gone then.
        """
        start = time.monotonic()
        quiet_since: float | None = None
        while True:
            try:
                await self.collect_dlq()
                results = await asyncio.to_thread(self._scan_s3)
                if len(self._settled(results)) == len(self.entries) and (
                    await self.ready_count() == 0
                ):
                    queues = await asyncio.to_thread(broker_queues, self._queue_names())
                    if queues is None or all(r == 0 and u == 0 for r, u, _ in
                                             queues.values()):
                        quiet_since = quiet_since or time.monotonic()
                        if not outcomes or await self._all_outcomes() or (
                                time.monotonic() - quiet_since > outcome_grace_s):
                            self.drained = True
                            break
                    else:
                        quiet_since = None
            except (aio_pika.exceptions.AMQPException, ConnectionError, OSError):
                await self.close()  # broker away: try again
            if time.monotonic() - start > timeout_s:
                break
            await asyncio.sleep(0.5)
        self.drain_s = round(time.monotonic() - start, 2)
        return self.drain_s

    @property
    def outcomes_missing(self) -> int:
        """Messages settled by the broker's account but with no outcome recorded."""
        dead_mids = {d.message_id for d in self.dead}
        return sum(1 for m in self._by_mid if m not in self.outcomes and m not in dead_mids)

    # --- classifying -------------------------------------------------------------------------
    def _versions(self) -> dict[str, list[tuple[str, str]]]:
        out: dict[str, list[tuple[str, str]]] = defaultdict(list)
        paginator = self.storage.client.get_paginator("list_object_versions")
        for page in paginator.paginate(Bucket=self.s.bucket, Prefix=self.s.training_prefix):
            for v in page.get("Versions", []):
                out[v["Key"]].append((v["VersionId"], v["ETag"]))
            for d in page.get("DeleteMarkers", []):
                out[d["Key"]].append((d["VersionId"], "delete-marker"))
        return out

    def _content_ikey(self, key: str) -> str | None:
        try:
            record = orjson.loads(self.storage.get(self.s.bucket, key))
            return str(record["metadata"]["idempotency_key"])
        except Exception:
            return None

    def _mismatches(self, classes: dict[str, str], reasons: dict[str, str | None]) -> list[str]:
        out = []
        for iid, e in self.entries.items():
            cls, got = classes[iid], reasons[iid]
            if cls != e.expect:
                out.append(f"{e.label}: expected {e.expect}, got {cls} ({got})")
            elif e.reason is not None and got not in e.reason:
                out.append(f"{e.label}: expected reason {'|'.join(e.reason)}, got {got}")
        return out

    async def classify(self) -> Verdict:
        await self.collect_dlq()
        await asyncio.to_thread(self._scan_s3)
        versions = await asyncio.to_thread(self._versions)
        by_name: dict[str, list[str]] = defaultdict(list)
        for key in versions:
            by_name[key.rsplit("/", 1)[-1].removesuffix(".jsonl")].append(key)
        wanted = {result_name(e.ikey): e for e in self.entries.values() if e.ikey}
        stray = sorted(k for name, ks in by_name.items() if name not in wanted for k in ks)
        single = [ks[0] for name, ks in by_name.items()
                  if name in wanted and len(ks) == 1 and len(versions[ks[0]]) == 1]
        with ThreadPoolExecutor(8) as pool:
            content = dict(zip(single, pool.map(self._content_ikey, single), strict=True))
        quarantined = self._quarantined()
        dead: dict[str, list[str]] = defaultdict(list)
        for d in self.dead:
            iid = self._entry_for_dead(d)
            if iid is not None:
                dead[iid].append(d.reason)
        classes: dict[str, str] = {}
        reasons: dict[str, str | None] = {}
        both = 0
        for iid, e in self.entries.items():
            keys = by_name.get(result_name(e.ikey), []) if e.ikey else []
            classes[iid], reasons[iid] = _one_class(iid, e, keys, versions, content,
                                                    quarantined, dead)
            both += classes[iid] in ("processed", "bad_result") and bool(dead.get(iid))
        mismatches = self._mismatches(classes, reasons)
        queues = await asyncio.to_thread(broker_queues, self._queue_names())
        if queues is None:  # no rabbitmqctl: ready counts only
            queues = {"(ready, all queues)": (await self.ready_count(), 0, 0)}
        await self._all_outcomes()
        return Verdict(
            classes=classes, counts=Counter(classes.values()), reasons=reasons,
            mismatches=mismatches, stray_results=stray, processed_and_dead_lettered=both,
            queues=queues, outcome_counts=Counter(self.outcomes.values()),
            inputs=len(self.entries), messages=self.messages,
        )


def render(name: str, verdict: Verdict, figures: dict[str, Any]) -> str:
    c = verdict.counts
    lines = [
        f"== chaos: {name}",
        f"  inputs {verdict.inputs} (messages {verdict.messages})",
        "  " + "  ".join(f"{k} {c[k]}" for k in CLASSES),
        f"  stray results {len(verdict.stray_results)}  processed+dlq "
        f"{verdict.processed_and_dead_lettered}  queues empty {verdict.queues_empty}",
        "  outcomes recorded " + ", ".join(f"{k} {v}" for k, v in
                                           sorted(verdict.outcome_counts.items())),
    ]
    lines += [f"  {k}: {v}" for k, v in figures.items()]
    lines.append(f"  verdict: {'PASS' if verdict.passed else 'FAIL'}")
    lines += [f"  mismatch: {m}" for m in verdict.mismatches[:20]]
    return "\n".join(lines)


def write_summary(name: str, verdict: Verdict, figures: dict[str, Any]) -> Path:
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    path = RUN_DIR / f"{name}.json"
    data = {
        "scenario": name,
        "inputs": verdict.inputs,
        "messages": verdict.messages,
        "outcomes": {k: verdict.counts[k] for k in CLASSES},
        "stray_results": len(verdict.stray_results),
        "processed_and_dead_lettered": verdict.processed_and_dead_lettered,
        "queues": {k: {"ready": r, "unacked": u, "consumers": n}
                   for k, (r, u, n) in verdict.queues.items()},
        "outcomes_recorded": dict(verdict.outcome_counts),
        "mismatches": verdict.mismatches,
        "passed": verdict.passed,
        "figures": figures,
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    path.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    return path


def _one_class(iid: str, e: Any, keys: list[str], versions: dict[str, Any],
               content: dict[str, str | None], quarantined: dict[str, str],
               dead: dict[str, list[str]]) -> tuple[str, str | None]:
    """One input's class: its result objects first, then quarantine, then the DLQ."""
    if len(keys) > 1 or any(len(versions[k]) > 1 for k in keys):
        return "duplicated", None
    if keys:
        return ("processed" if content.get(keys[0]) == e.ikey else "bad_result"), None
    if iid in quarantined:
        return "quarantined", quarantined[iid]
    if iid in dead:
        return "dead_lettered", dead[iid][0]
    return "lost", None
