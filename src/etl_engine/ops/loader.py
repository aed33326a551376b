"""``etl-engine load-samples``: upload a folder of exports, announce each, wait, summarise.

Uploads run ``jobs`` at a time (threads sharing one boto3 client, whose connection pool
is sized to match); announcements are pipelined confirmed publishes; the wait polls the
dedup store's per-message outcomes. Each phase reports through ``ops.progress``.

Which outcome a file had is known only by waiting (``--wait``): the report then names the
files that were quarantined or dead-lettered, and the command exits 1 for them unless the
operator accepts failures (``--allow-failures``).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from etl_engine.adapters.publisher import Publisher, Upload, upload_file, wait_for_outcomes
from etl_engine.adapters.storage import Storage
from etl_engine.errors import ExitCode
from etl_engine.ops.progress import Progress
from etl_engine.settings import Settings

FAILED = ("quarantined", "dead_letter")
ROWS = (("processed", "processed"), ("duplicates", "duplicate"),
        ("quarantined", "quarantined"), ("dead-lettered", "dead_letter"))
ProgressFactory = Callable[[str, int], Progress]


@dataclass(slots=True)
class LoadReport:
    """What a load did; ``outcomes`` by AMQP message id (empty without ``--wait``)."""

    run_id: str
    directory: Path
    files: list[tuple[str, Path]]
    message_ids: list[str]
    waited: bool
    outcomes: dict[str, str] = field(default_factory=dict)
    elapsed_s: float = 0.0

    @property
    def counts(self) -> Counter[str]:
        return Counter(self.outcomes.values())

    @property
    def pending(self) -> int:
        return len(self.message_ids) - len(self.outcomes) if self.waited else 0

    def failed_files(self) -> list[tuple[str, str]]:
        """(outcome, path relative to the folder) of each file that did not make it."""
        return [(self.outcomes[m], self._relative(path))
                for m, (_, path) in zip(self.message_ids, self.files, strict=True)
                if self.outcomes.get(m) in FAILED]

    def _relative(self, path: Path) -> str:
        try:
            return str(path.relative_to(self.directory))
        except ValueError:
            return str(path)

    def exit_code(self, *, allow_failures: bool) -> int:
        if self.pending or (self.failed_files() and not allow_failures):
            return ExitCode.FAILURES
        return ExitCode.OK

    def as_dict(self) -> dict[str, Any]:
        counts = self.counts
        doc: dict[str, Any] = {"run_id": self.run_id or None, "messages": len(self.files),
                               "waited": self.waited}
        if self.waited:
            doc.update({name.replace("-", "_"): counts.get(kind, 0) for name, kind in ROWS})
            doc.update(not_settled=self.pending, elapsed_s=round(self.elapsed_s, 3),
                       throughput_msg_s=round(len(self.outcomes) / self.elapsed_s, 2)
                       if self.elapsed_s else None)
        doc["files"] = [
            {"path": self._relative(path), "record_type": rt, "message_id": m,
             "outcome": self.outcomes.get(m) if self.waited else None}
            for m, (rt, path) in zip(self.message_ids, self.files, strict=True)]
        return doc

    def summary_lines(self) -> list[str]:
        """The text summary (the demo prints it)."""
        counts = self.counts
        rows: list[tuple[str, object]] = [("messages", len(self.files))]
        rows += [(name, counts.get(kind, 0)) for name, kind in ROWS]
        rows += [("not settled", self.pending), ("elapsed", f"{self.elapsed_s:.2f} s"),
                 ("throughput", f"{len(self.outcomes) / self.elapsed_s:.1f} msg/s"
                  if self.elapsed_s else "-")]
        width = max(len(name) for name, _ in rows)
        return ["summary", *(f"  {name:<{width}}  {value}" for name, value in rows)]


def upload_all(storage: Storage, settings: Settings, files: list[tuple[str, Path]], *,
               run_id: str, jobs: int, progress: Progress) -> list[Upload]:
    """Upload every file, ``jobs`` at a time, in the upload service's layout. Each file
    gets its own upload time (a microsecond apart), so no two share a key."""
    base = datetime.now(UTC)
    uploads: list[Upload | None] = [None] * len(files)
    pool = ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix="upload")
    try:
        futures: dict[Future[Upload], int] = {
            pool.submit(upload_file, storage, settings, rt, path, run_id=run_id,
                        when=base + timedelta(microseconds=i)): i
            for i, (rt, path) in enumerate(files)}
        for future in as_completed(futures):
            up = future.result()  # the first failure stops the load (one clear line)
            uploads[futures[future]] = up
            progress.advance(1, up.size)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    return [u for u in uploads if u is not None]


async def publish_all(settings: Settings, uploads: list[Upload], message_ids: list[str],
                      progress: Progress, *, window: int = 256) -> None:
    """Confirmed, mandatory announcements, ``window`` awaiting their confirm at a time.

    A fresh AMQP message-id per announcement (as aio-pika gives the upload service): a
    re-announced file is then counted as this run's duplicate, not as the outcome
    recorded for the first announcement."""
    sem = asyncio.Semaphore(window)
    async with Publisher(settings) as pub:
        async def one(up: Upload, message_id: str) -> None:
            async with sem:
                await pub.publish(up.message(), message_id=message_id)
            progress.advance()

        await asyncio.gather(*(one(u, m) for u, m in zip(uploads, message_ids, strict=True)))


def load(settings: Settings, storage: Storage, files: list[tuple[str, Path]], *,
         directory: Path, run_id: str, jobs: int, wait: bool, timeout_s: float,
         progress: ProgressFactory) -> LoadReport:
    """Upload, announce and (``wait``) wait for every file's outcome."""
    report = LoadReport(run_id, directory, files, [str(uuid.uuid4()) for _ in files], wait)
    storage.ensure_bucket(settings.bucket)
    with progress("uploaded", len(files)) as bar:
        uploads = upload_all(storage, settings, files, run_id=run_id, jobs=jobs, progress=bar)
    start = time.monotonic()

    async def announce_and_wait() -> dict[str, str]:
        with progress("published", len(uploads)) as bar:
            await publish_all(settings, uploads, report.message_ids, bar)
        if not wait:
            return {}
        with progress("settled", len(uploads)) as bar:
            seen, _ = await wait_for_outcomes(settings, report.message_ids,
                                              timeout_s=timeout_s, on_progress=bar.update)
        return seen

    report.outcomes = asyncio.run(announce_and_wait())
    report.elapsed_s = time.monotonic() - start
    return report
