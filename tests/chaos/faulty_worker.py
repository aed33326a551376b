"""``etl-engine worker`` with a crash point: the worker process of the crash tests.

Builds the normal worker, adds an observer that SIGKILLs this process at one point of a
delivery, and runs it as ``etl-engine worker`` does (``cmd_worker`` in ops/cli.py). The
package has no switch for this: only this module reads ``CHAOS_FAULT_POINT``,
``<point>[@<key substring>],...``. A point fires for every message whose idempotency key
contains the substring (every message without one):

    after_download  fetched and verified
    after_decode    the CPU stages ran (before a failed validation is quarantined)
    after_write     the result object is stored, no done marker yet
    after_done      the done marker is written, the broker not yet told
    before_ack      republished or recorded as the outcome needs, not yet acked

Run with the venv's python: ``python tests/chaos/faulty_worker.py`` (helpers.WorkerProcess
does, given ``fault_point=``).
"""

from __future__ import annotations

import os
import signal
import sys

from etl_engine.domain.messages import HealthDataMessage
from etl_engine.runtime import hooks
from etl_engine.runtime.hooks import PipelineObserver
from etl_engine.runtime.pipeline import Outcome
from etl_engine.runtime.worker import serve
from etl_engine.settings import ConfigError, load_settings

ENV = "CHAOS_FAULT_POINT"
POINTS = (*(f"after_{stage}" for stage in hooks.STAGES), "before_ack")


class CrashAt(PipelineObserver):
    """SIGKILLs the process at the points of ``spec`` (the format above)."""

    def __init__(self, spec: str) -> None:
        self.points: dict[str, str] = {}  # point -> key substring ("" matches every key)
        for part in filter(None, (p.strip() for p in spec.split(","))):
            point, _, match = part.partition("@")
            if point not in POINTS:
                raise ValueError(f"{ENV}: unknown point {point!r} (known: {POINTS})")
            self.points[point] = match

    def _hit(self, point: str, idempotency_key: str) -> None:
        match = self.points.get(point)
        if match is not None and match in idempotency_key:
            os.kill(os.getpid(), signal.SIGKILL)

    def stage_finished(self, stage: str, message: HealthDataMessage) -> None:
        self._hit(f"after_{stage}", message.idempotency_key)

    def acking(self, outcome: Outcome) -> None:
        self._hit("before_ack", outcome.message.idempotency_key if outcome.message else "")


def main() -> int:
    """``etl-engine worker`` (``runtime.worker.serve``) with the crash observer installed."""
    crash = CrashAt(os.environ.get(ENV, ""))
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"faulty_worker: {exc}", file=sys.stderr)
        return 78  # EX_CONFIG, as etl-engine worker
    return serve(settings, [crash])


if __name__ == "__main__":
    raise SystemExit(main())
