"""Issue 15, holes 1 and 2: an object store that answers 409 while a write to the key is in
flight, resets a result upload halfway through its body, or ignores ``If-None-Match``.
Everything goes through the S3 shim (``tests/s3shim.py``) in front of the test's S3 server.

- 409 ``ConditionalRequestConflict`` must be retried, never read as "already exists"; with
  the winner's upload failing after the loser's 409, reading it as "exists" loses the
  input (the loser acks, the winner's retry copy finds the done marker).
- A store that ignores ``If-None-Match`` must stop the worker at start, unless the operator
  opts in with ``ETL_UNSAFE_NO_CONDITIONAL_WRITES=true``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from s3shim import S3Shim

from .harness import Chaos, scale

pytestmark = pytest.mark.chaos


@pytest.fixture
def shim(s3_endpoint: str) -> Iterator[S3Shim]:
    shim = S3Shim.before(s3_endpoint)
    yield shim
    shim.close()


async def test_409_while_a_put_is_open_and_result_puts_reset(chaos: Chaos, shim: S3Shim
                                                            ) -> None:
    s = chaos.setup(ETL_MAX_ATTEMPTS="5")
    n = scale(24, 300)
    bodies = chaos.bodies(chaos.upload_samples(max_bytes=8_000), n)
    shim.conflict_on_open_put = True
    shim.hold_put_s = 0.3  # every PUT stays open 0.3 s: the two writers of a key overlap
    shim.reset_put_prefix = s.training_prefix
    shim.resets_per_key = 3  # beyond obstore's own 2 retries: the result write fails once
    # Two workers that share no lease (a dedup prefix each), every input published twice:
    # both copies of an input run at once, as after a lease expiry or a Redis flush.
    for name in ("a", "b"):
        await chaos.fleet.up(name, ETL_S3_ENDPOINT_URL=shim.url,
                             ETL_DEDUP_PREFIX=f"{s.dedup_prefix}:{name}")
    chaos.mark_start()
    twins = [{**b, "message_id": str(uuid.uuid4())} for b in bodies]
    await chaos.publish([m for pair in zip(bodies, twins, strict=True) for m in pair])
    chaos.fault_counters.append(lambda: shim.counts["conflicts"] + shim.counts["resets"])
    verdict = await chaos.finish(drain_timeout=180, outcomes=False)
    chaos.amend(conflicts_409=shim.counts["conflicts"], puts_reset=shim.counts["resets"],
                conditional_puts=shim.counts["conditional_puts"])
    assert verdict.counts["processed"] == n
    assert shim.counts["resets"] > 0, "no result upload was cut"
    assert shim.counts["conflicts"] > 0, "no 409 was answered: the writers never overlapped"


async def test_store_ignoring_if_none_match_refuses_to_start(chaos: Chaos, shim: S3Shim
                                                            ) -> None:
    s = chaos.setup()
    shim.ignore_if_none_match = True  # a conditional PUT overwrites and answers 200
    (body,) = chaos.bodies(chaos.upload_samples(max_bytes=8_000)[:1], 1)
    await chaos.publish([body])
    refused = chaos.fleet.start("refused", ETL_S3_ENDPOINT_URL=shim.url)
    code = await refused.wait_exit(60)
    said = refused.log_path.read_text(errors="replace")
    assert code == 78, f"a worker on a store that ignores If-None-Match exited {code}, not " \
        "78 (EX_CONFIG)"
    assert "ETL_UNSAFE_NO_CONDITIONAL_WRITES" in said, said[-2000:]
    assert await chaos.ledger.ready_count() == 1, "the refused worker touched the queue"
    # The operator's explicit opt-in starts it, and it says so.
    unsafe = await chaos.fleet.up("unsafe", ETL_S3_ENDPOINT_URL=shim.url,
                                  ETL_UNSAFE_NO_CONDITIONAL_WRITES="true")
    assert chaos.fleet.events("unsafe_no_conditional_writes", worker=unsafe), \
        "the unsafe start was not logged"
    chaos.figures.update({"refused_exit_code": code, "store": s.s3_endpoint_url})
    await chaos.finish()
