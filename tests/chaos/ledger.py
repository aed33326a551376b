"""The chaos checker: a ledger of every input published, and what became of each one.

The promise it checks: every input ends in **exactly one** outcome — one result, one
quarantine with a reason, or one DLQ entry with a reason. Every input is judged from the
outside only: the bucket's listings **with versions** (the harness turns versioning on,
so an overwrite or a delete stays visible), the DLQ's messages, and the broker's queue
counts. Never a worker's log, and never the worker-written outcome records under
``outcomes/``: those are reported (figures), but they cannot excuse a second artefact.

What counts, per input:

- a result:     a live result object named after its idempotency key (``training/``)
- a quarantine: a live ``*.reason.json`` naming it (any path under ``quarantine/``; by
                message id, else by idempotency key)
- a DLQ entry:  each DLQ message for it (by message id, else by idempotency key)

and its class:

- duplicated:    two live result objects, or a result object overwritten (a 2nd version
                 written over a live one)
- two_outcomes:  any other second artefact: a result and a reason file, a result and a
                 DLQ entry, a reason file and a DLQ entry, two DLQ entries, two reason
                 files, or a reason file overwritten (a 2nd version over a live one; one
                 per ``quarantine release`` the scenario ran is allowed: ``note_release``)
- processed:     one result, one version, whose ``metadata.idempotency_key`` is the input's
- bad_result:    one result whose content is another input's
- quarantined:   one live reason file, nothing else
- dead_lettered: one DLQ entry, nothing else
- lost:          none of these (a reason file deleted with nothing in its place is lost)

A version written after a delete marker is a re-creation (a release deleted the old one),
not an overwrite. Pass: lost, duplicated, bad_result and two_outcomes all 0, no stray
result objects, the work and retry queues at 0 ready and 0 unacked, and processed +
quarantined + dead_lettered == inputs.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import shutil
import subprocess
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import orjson

from etl_engine.adapters.dedup import open_store
from etl_engine.adapters.storage import Storage, make_client
from etl_engine.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
RUN_DIR = ROOT / ".run" / "chaos"
FINAL = ("processed", "quarantined", "dead_lettered")
CLASSES = ("processed", "quarantined", "dead_lettered", "lost", "duplicated", "bad_result",
           "two_outcomes")
REASON_SUFFIX = ".reason.json"
_SAFE_KEY_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._=-")


def result_name(idempotency_key: str, lineage_key: bytes) -> str:
    """The file name the pipeline gives an input's result: the record id, HMAC-SHA256 of
    ``record`` NUL key under ETL_LINEAGE_KEY, 32 hex digits (a safe name as it is):
    restated here so the ledger does not take the worker's word."""
    message = b"record\x00" + idempotency_key.encode()
    name = hmac.new(lineage_key, message, hashlib.sha256).hexdigest()[:32]
    assert set(name) <= _SAFE_KEY_CHARS
    return name


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value) if value is not None else ""


# --- what was published -------------------------------------------------------------------------
@dataclass
class Entry:
    input_id: str
    ikey: str | None
    expect: tuple[str, ...]  # the classes it may end in (one, unless a scenario says)
    reason: tuple[str, ...] | None
    label: str
    message_ids: list[str] = field(default_factory=list)
    releases: int = 0  # ``quarantine release`` runs on it: each may replace its reason file


@dataclass
class DeadLetter:
    message_id: str | None
    reason: str
    ikey: str | None
    body_bytes: int
    # Which outcome the copy delivers: the worker's x-etl-outcome-id for a recorded
    # dead-letter, else the body's digest (an unparseable message has no record). Two
    # copies with one identity are one outcome published twice (a DLQ confirm that timed
    # out, then landed): at least once to the DLQ, counted apart, never a second outcome.
    identity: str = ""


# --- what is seen in the bucket -----------------------------------------------------------------
@dataclass
class History:
    """One S3 key's versions, from ``list_object_versions``."""

    key: str
    versions: list[str] = field(default_factory=list)  # data version ids
    deletes: int = 0
    latest: str | None = None  # the latest data version's id; None: deleted (or none)

    @property
    def live(self) -> bool:
        return self.latest is not None

    @property
    def overwrites(self) -> int:
        """Versions written over a live one (a version after a delete is a re-creation)."""
        return max(0, len(self.versions) - 1 - self.deletes)


def histories(pages: Iterable[dict[str, Any]]) -> dict[str, History]:
    """Per key, its versions and delete markers, from ``list_object_versions`` pages."""
    out: dict[str, History] = {}
    for page in pages:
        for v in page.get("Versions", []):
            h = out.setdefault(v["Key"], History(v["Key"]))
            h.versions.append(v["VersionId"])
            if v.get("IsLatest"):
                h.latest = v["VersionId"]
        for d in page.get("DeleteMarkers", []):
            out.setdefault(d["Key"], History(d["Key"])).deletes += 1
    return out


@dataclass
class Observed:
    """Everything seen from the outside, before it is judged."""

    results: dict[str, History]  # result object key -> history
    reasons: dict[str, History]  # reason file key -> history
    reason_docs: dict[tuple[str, str], dict[str, Any]]  # (key, version id) -> content
    dead: list[DeadLetter]
    content: dict[str, str | None] = field(default_factory=dict)  # result key -> its ikey
    lineage_key: bytes = b""  # the workers' ETL_LINEAGE_KEY: names results (result_name)


@dataclass
class Evidence:
    """One input's artefacts."""

    results: list[History] = field(default_factory=list)
    reasons: list[History] = field(default_factory=list)
    reason_codes: dict[str, str] = field(default_factory=dict)  # reason key -> latest code
    dead: list[str] = field(default_factory=list)  # DLQ reasons
    content_ok: bool | None = None
    releases: int = 0

    def artefacts(self) -> list[str]:
        """Every outcome artefact, one name per artefact (two: two outcomes)."""
        out = [f"result {h.key}" for h in self.results if h.live]
        out += [f"reason {h.key}" for h in self.reasons if h.live]
        overwritten = sum(h.overwrites for h in self.reasons) - self.releases
        out += [f"overwritten reason ({n + 1})" for n in range(max(0, overwritten))]
        out += [f"dlq {r}" for r in self.dead]
        return out


def judge(e: Evidence) -> tuple[str, str | None]:
    """One input's class and its observed reason code (the module docstring's rules)."""
    live_results = [h for h in e.results if h.live]
    if len(live_results) > 1 or any(h.overwrites for h in e.results):
        return "duplicated", None
    artefacts = e.artefacts()
    if len(artefacts) > 1:
        return "two_outcomes", " + ".join(artefacts)
    if live_results:
        return ("processed" if e.content_ok else "bad_result"), None
    live_reasons = [h for h in e.reasons if h.live]
    if live_reasons:
        return "quarantined", e.reason_codes.get(live_reasons[0].key)
    if e.dead:
        return "dead_lettered", e.dead[0]
    return "lost", None


@dataclass
class Attribution:
    """Which input each artefact belongs to, and what belongs to none."""

    evidence: dict[str, Evidence]
    stray_results: list[str]
    stray_reasons: list[str]
    stray_dead: int
    repeated_dead: int = 0  # second copies of one dead-letter outcome (at least once)


class Index:
    """Message ids and idempotency keys -> input ids (an idempotency key belongs to the
    first input recorded with it: a conflicting second input is an input of its own)."""

    def __init__(self, entries: dict[str, Entry], lineage_key: bytes) -> None:
        self.entries = entries
        self.by_mid = {m: iid for iid, e in entries.items() for m in e.message_ids}
        self.by_ikey: dict[str, str] = {}
        for iid, e in entries.items():
            if e.ikey is not None:
                self.by_ikey.setdefault(e.ikey, iid)
        self.by_name = {result_name(k, lineage_key): iid for k, iid in self.by_ikey.items()}

    def of(self, message_id: Any, ikey: Any) -> str | None:
        if message_id is not None and str(message_id) in self.by_mid:
            return self.by_mid[str(message_id)]
        return self.by_ikey.get(str(ikey)) if ikey is not None else None


def attribute(entries: dict[str, Entry], seen: Observed) -> Attribution:
    """Each artefact to its input (pure: the unit tests feed it synthetic listings)."""
    index = Index(entries, seen.lineage_key)
    ev = {iid: Evidence(releases=e.releases) for iid, e in entries.items()}
    stray_results = []
    for key, h in seen.results.items():
        iid = index.by_name.get(key.rsplit("/", 1)[-1].removesuffix(".jsonl"))
        if iid is None:
            stray_results.append(key)
        else:
            ev[iid].results.append(h)
            if h.live and key in seen.content:
                ev[iid].content_ok = seen.content[key] is not None
    stray_reasons = _attribute_reasons(index, seen, ev)
    stray_dead, repeated = 0, 0
    delivered: set[tuple[str, str]] = set()
    for d in seen.dead:
        iid = index.of(d.message_id, d.ikey)
        if iid is None:
            stray_dead += 1
        elif d.identity and (iid, d.identity) in delivered:
            repeated += 1  # the same outcome's second copy
        else:
            delivered.add((iid, d.identity))
            ev[iid].dead.append(d.reason)
    return Attribution(ev, sorted(stray_results), sorted(stray_reasons), stray_dead, repeated)


def _attribute_reasons(index: Index, seen: Observed, ev: dict[str, Evidence]) -> list[str]:
    """Each reason file to every input one of its versions names; returns the strays."""
    docs: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for (key, _), doc in seen.reason_docs.items():
        docs[key].append(doc)
    stray = []
    for key, h in seen.reasons.items():
        owners = {index.of(d.get("message_id"), d.get("idempotency_key")) for d in docs[key]}
        owners.discard(None)
        if not owners:
            stray.append(key)
        latest = seen.reason_docs.get((key, h.latest or ""), {})
        for iid in sorted(o for o in owners if o is not None):
            ev[iid].reasons.append(h)
            ev[iid].reason_codes[key] = str(latest.get("reason"))
    return stray


def content_matches(entries: dict[str, Entry], seen: Observed) -> None:
    """``seen.content``: key -> the ikey if the stored record is the owner's, else None."""
    index = Index(entries, seen.lineage_key)
    for key, ikey in list(seen.content.items()):
        iid = index.by_name.get(key.rsplit("/", 1)[-1].removesuffix(".jsonl"))
        owner = entries[iid].ikey if iid is not None else None
        seen.content[key] = ikey if ikey is not None and ikey == owner else None


# --- the verdict ---------------------------------------------------------------------------------
@dataclass
class Verdict:
    classes: dict[str, str]  # input id -> class
    counts: Counter[str]
    reasons: dict[str, str | None]  # input id -> observed reason code (or the artefacts)
    mismatches: list[str]
    stray_results: list[str]
    queues: dict[str, tuple[int, int, int]]  # name -> (ready, unacked, consumers)
    outcome_counts: Counter[str]
    inputs: int
    messages: int
    stray_reasons: list[str] = field(default_factory=list)
    stray_dead: int = 0
    repeated_dead: int = 0
    records: dict[str, int] = field(default_factory=dict)  # outcome records (reported only)
    # A scenario that holds confirms up (a memory alarm) may see a second DLQ copy of one
    # outcome (at least once to the DLQ); everywhere else a repeated copy fails the run.
    repeats_allowed: bool = False

    @property
    def two_outcomes(self) -> int:
        return self.counts["two_outcomes"]

    @property
    def queues_empty(self) -> bool:
        return all(r == 0 and u == 0 for r, u, _ in self.queues.values())

    @property
    def passed(self) -> bool:
        c = self.counts
        return (
            c["lost"] == 0 and c["duplicated"] == 0 and c["bad_result"] == 0
            and c["two_outcomes"] == 0 and not self.stray_results and self.queues_empty
            and not self.stray_reasons and self.stray_dead == 0
            and (self.repeated_dead == 0 or self.repeats_allowed)
            and sum(c[k] for k in FINAL) == self.inputs
        )


def verdict_of(entries: dict[str, Entry], seen: Observed, *, messages: int = 0,
               queues: dict[str, tuple[int, int, int]] | None = None,
               outcome_counts: Counter[str] | None = None) -> Verdict:
    """Judge every input on what was seen (pure)."""
    att = attribute(entries, seen)
    classes: dict[str, str] = {}
    reasons: dict[str, str | None] = {}
    for iid, ev in att.evidence.items():
        classes[iid], reasons[iid] = judge(ev)
    return Verdict(
        classes=classes, counts=Counter(classes.values()), reasons=reasons,
        mismatches=mismatches(entries, classes, reasons), stray_results=att.stray_results,
        queues=queues or {}, outcome_counts=outcome_counts or Counter(), inputs=len(entries),
        messages=messages, stray_reasons=att.stray_reasons, stray_dead=att.stray_dead,
        repeated_dead=att.repeated_dead,
    )


def mismatches(entries: dict[str, Entry], classes: dict[str, str],
               reasons: dict[str, str | None]) -> list[str]:
    out = []
    for iid, e in entries.items():
        cls, got = classes[iid], reasons[iid]
        if cls not in e.expect:
            out.append(f"{e.label}: expected {'|'.join(e.expect)}, got {cls} ({got})")
        elif e.reason is not None and cls != "processed" and got not in e.reason:
            out.append(f"{e.label}: expected reason {'|'.join(e.reason)}, got {got}")
    return out


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


# --- the ledger ----------------------------------------------------------------------------------
class Ledger:
    def __init__(self, settings: Settings) -> None:
        self.s = settings
        self.storage = Storage(make_client(settings, pool=16))
        self.entries: dict[str, Entry] = {}
        self._by_mid: dict[str, str] = {}
        self.dead: list[DeadLetter] = []
        self._reason_docs: dict[tuple[str, str], dict[str, Any]] = {}
        self._conn: aio_pika.abc.AbstractConnection | None = None
        self.messages = 0
        self.drain_s: float | None = None
        self.drained = False
        self.outcomes: dict[str, str] = {}
        self._last_reasons: dict[str, History] = {}

    # --- recording ---------------------------------------------------------------------------
    def add(
        self, body: dict[str, Any] | bytes, *, expect: str | tuple[str, ...] = "processed",
        reason: str | tuple[str, ...] | None = None, label: str = "",
        message_id: str | None = None, input_id: str | None = None,
    ) -> None:
        """Record one published message (several messages may be the same input).
        ``expect``: the class it must end in, or a tuple of those it may end in."""
        expects = (expect,) if isinstance(expect, str) else tuple(expect)
        assert expects and set(expects) <= set(FINAL), expects
        ikey = None
        if isinstance(body, dict) and isinstance(body.get("idempotency_key"), str):
            ikey = body["idempotency_key"]
        mid = message_id or (body.get("message_id") if isinstance(body, dict) else None)
        assert mid, "every ledger message needs a message id"
        iid = input_id or ikey or mid
        entry = self.entries.get(iid)
        if entry is None:
            reasons = (reason,) if isinstance(reason, str) else reason
            entry = Entry(iid, ikey, expects, reasons, label or iid)
            self.entries[iid] = entry
        entry.message_ids.append(mid)
        self._by_mid[mid] = iid
        self.messages += 1

    def note_release(self, input_id: str) -> None:
        """A ``quarantine release`` ran on this input: its reason file may be replaced once
        more (the release's new quarantine) without counting as a second outcome."""
        self.entries[input_id].releases += 1

    @property
    def message_ids(self) -> list[str]:
        return list(self._by_mid)

    # --- the broker ----------------------------------------------------------------------------
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
        """Take every message out of the DLQ into ``self.dead`` (each one is counted)."""
        ch = await self._channel()
        try:
            q = await ch.declare_queue(self.s.dlq_name, passive=True)
            while (msg := await q.get(fail=False, no_ack=True)) is not None:
                self.dead.append(_dead_letter(msg))
        finally:
            with contextlib.suppress(Exception):
                await ch.close()

    # --- the bucket ----------------------------------------------------------------------------
    def _histories(self, prefix: str) -> dict[str, History]:
        """Every version under ``prefix``. One page if the server allows: moto walks the
        whole bucket (and grows its memory) for every page of a version listing."""
        paginator = self.storage.client.get_paginator("list_object_versions")
        return histories(paginator.paginate(Bucket=self.s.bucket, Prefix=prefix,
                                            PaginationConfig={"PageSize": 1_000_000}))

    def _live(self, prefix: str) -> dict[str, History]:
        """The live objects only, each as one version "live": the drain's cheap view."""
        return {k: History(k, ["live"], 0, "live")
                for k in self.storage.list_keys(self.s.bucket, prefix)}

    def _observe(self, *, versions: bool = True) -> Observed:
        """Results and reason files with every version (the verdict), or the live ones
        (the drain, every half second). Reason files' contents are read once per version:
        a quarantine path may be shared, each version names its input."""
        listing = self._histories if versions else self._live
        results = {k: h for k, h in listing(self.s.training_prefix).items()
                   if k.endswith(".jsonl")}
        reasons = {k: h for k, h in listing(self.s.quarantine_prefix).items()
                   if k.endswith(REASON_SUFFIX)}
        for key, h in reasons.items():
            for vid in h.versions:
                if (key, vid) not in self._reason_docs:
                    self._read_reason(key, vid)
        docs = {(k, v): d for (k, v), d in self._reason_docs.items()
                if (v == "live") != versions}
        return Observed(results, reasons, docs, list(self.dead), lineage_key=self._lineage_key)

    def _read_reason(self, key: str, vid: str) -> None:
        """One reason file's content (``vid`` "live": its current version)."""
        extra = {} if vid == "live" else {"VersionId": vid}
        with contextlib.suppress(Exception):
            resp = self.storage.client.get_object(Bucket=self.s.bucket, Key=key, **extra)
            self._reason_docs[(key, vid)] = json.loads(resp["Body"].read())

    @property
    def _lineage_key(self) -> bytes:
        return self.s.lineage_key.get_secret_value().encode()

    def _content_record_id(self, key: str) -> str | None:
        try:
            record = orjson.loads(self.storage.get(self.s.bucket, key))
            return str(record["metadata"]["record_id"])
        except Exception:
            return None

    def _read_contents(self, seen: Observed) -> None:
        """The input named inside every single live result, by its record id (the others
        are judged without reading them)."""
        keys = [k for k, h in seen.results.items() if h.live and len(h.versions) == 1]
        ikey_of = {result_name(e.ikey, self._lineage_key): e.ikey
                   for e in self.entries.values() if e.ikey is not None}
        with ThreadPoolExecutor(8) as pool:
            rids = pool.map(self._content_record_id, keys)
            seen.content = {k: ikey_of.get(r) if r else None
                            for k, r in zip(keys, rids, strict=True)}
        content_matches(self.entries, seen)

    def outcome_records(self) -> dict[str, int]:
        """The workers' outcome records, reported only (never used to judge an input)."""
        prefix = str(getattr(self.s, "outcome_prefix", "outcomes/"))
        hist = self._histories(prefix)
        records = [h for k, h in hist.items() if k.endswith(".json")]
        return {"outcome_records": sum(h.live for h in records),
                "outcome_records_overwritten": sum(1 for h in records if h.overwrites),
                "dlq_markers": sum(h.live for k, h in hist.items() if k.endswith(".dlq"))}

    @property
    def reason_overwrites(self) -> int:
        """Reason-file versions written over a live one, across the bucket (as listed by
        the last ``classify``)."""
        return sum(h.overwrites for h in self._last_reasons.values())

    # --- draining ----------------------------------------------------------------------------
    def _settled(self, seen: Observed) -> int:
        att = attribute(self.entries, seen)
        return sum(1 for e in att.evidence.values() if e.artefacts())

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

    async def _quiet(self) -> bool:
        """Every input has an artefact and the work and retry queues hold nothing."""
        await self.collect_dlq()
        seen = await asyncio.to_thread(self._observe, versions=False)
        if self._settled(seen) < len(self.entries) or await self.ready_count() != 0:
            return False
        queues = await asyncio.to_thread(broker_queues, self._queue_names())
        return queues is None or all(r == 0 and u == 0 for r, u, _ in queues.values())

    async def drain(self, timeout_s: float, *, outcomes: bool = True,
                    outcome_grace_s: float = 10.0) -> float:
        """Wait until every input has an artefact and the queues are empty (0 unacked).

        ``outcomes``: also wait for every message's final outcome in the dedup store, but
        at most ``outcome_grace_s`` once the broker holds nothing more (a record can be
        missing without anything being wrong with the message: see ``outcomes_missing``).
        Not when the store itself was disrupted: its records are gone then.
        """
        start = time.monotonic()
        quiet_since: float | None = None
        while True:
            try:
                if await self._quiet():
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
    async def classify(self) -> Verdict:
        await self.collect_dlq()
        seen = await asyncio.to_thread(self._observe)
        self._last_reasons = seen.reasons
        await asyncio.to_thread(self._read_contents, seen)
        queues = await asyncio.to_thread(broker_queues, self._queue_names())
        if queues is None:  # no rabbitmqctl: ready counts only
            queues = {"(ready, all queues)": (await self.ready_count(), 0, 0)}
        await self._all_outcomes()
        verdict = verdict_of(self.entries, seen, messages=self.messages, queues=queues,
                             outcome_counts=Counter(self.outcomes.values()))
        with contextlib.suppress(Exception):
            verdict.records = await asyncio.to_thread(self.outcome_records)
        return verdict


def _dead_letter(msg: aio_pika.abc.AbstractIncomingMessage) -> DeadLetter:
    """A DLQ message as the ledger counts it: its ids and the reason it carries."""
    headers: dict[str, Any] = dict(msg.headers or {})
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
    identity = _text(headers.get("x-etl-outcome-id")) or hashlib.sha256(msg.body).hexdigest()
    return DeadLetter(msg.message_id, reason or "unknown", ikey, len(msg.body),
                      f"{identity}:{reason or 'unknown'}")


# --- reporting -----------------------------------------------------------------------------------
def render(name: str, verdict: Verdict, figures: dict[str, Any]) -> str:
    c = verdict.counts
    lines = [
        f"== chaos: {name}",
        f"  inputs {verdict.inputs} (messages {verdict.messages})",
        "  " + "  ".join(f"{k} {c[k]}" for k in CLASSES),
        f"  stray results {len(verdict.stray_results)}  stray reason files "
        f"{len(verdict.stray_reasons)}  stray dlq {verdict.stray_dead}  queues empty "
        f"{verdict.queues_empty}",
        "  outcomes recorded " + ", ".join(f"{k} {v}" for k, v in
                                           sorted(verdict.outcome_counts.items())),
    ]
    if verdict.records:
        lines.append("  outcome records (reported, not judged) " + ", ".join(
            f"{k} {v}" for k, v in verdict.records.items()))
    lines += [f"  {k}: {v}" for k, v in figures.items()]
    lines.append(f"  verdict: {'PASS' if verdict.passed else 'FAIL'}")
    lines += [f"  mismatch: {m}" for m in verdict.mismatches[:20]]
    two = [f"{i}: {verdict.reasons[i]}" for i, k in verdict.classes.items()
           if k in ("two_outcomes", "duplicated", "lost")]
    lines += [f"  not one outcome: {t}" for t in two[:20]]
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
        "stray_reason_files": len(verdict.stray_reasons),
        "stray_dead_letters": verdict.stray_dead,
        "repeated_dead_letter_copies": verdict.repeated_dead,
        "queues": {k: {"ready": r, "unacked": u, "consumers": n}
                   for k, (r, u, n) in verdict.queues.items()},
        "outcomes_recorded": dict(verdict.outcome_counts),
        "outcome_records": verdict.records,
        "mismatches": verdict.mismatches,
        "passed": verdict.passed,
        "figures": figures,
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    path.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    return path
