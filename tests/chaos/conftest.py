"""Chaos-suite fixtures. The suite only runs when asked for (``-m chaos``, or a path under
``tests/chaos``), so the ordinary ``pytest`` run stays fast.

``tests/chaos`` is a package so that this module is not imported as ``conftest`` (the
top-level name other test modules import their constants from).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from helpers import delete_topology

from .harness import LONG, Chaos


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Chaos scenarios only when asked for; the soak (``soak``) only when named in ``-m``
    or with ``ETL_CHAOS_LONG=1`` (``scripts/chaos.sh --long`` / ``--soak``)."""
    markexpr = config.getoption("markexpr") or ""
    wanted = "chaos" in markexpr or any("chaos" in str(arg) for arg in config.args)
    soak = "soak" in markexpr or LONG
    drop = [i for i in items if (not wanted and i.get_closest_marker("chaos"))
            or (not soak and i.get_closest_marker("soak"))]
    if drop:
        config.hook.pytest_deselected(items=drop)
        gone = set(drop)
        items[:] = [i for i in items if i not in gone]


@pytest.fixture
async def chaos(request: pytest.FixtureRequest, test_env: dict[str, str], tmp_path: Path,
                monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Chaos]:
    name = request.node.name.removeprefix("test_").replace("[", "-").rstrip("]")
    c = Chaos(name, test_env, tmp_path, monkeypatch)
    try:
        yield c
    finally:
        await c._stop_supervisors()
        if c._fleet is not None:
            c._fleet.kill_all()
        if c._ledger is not None:
            await c._ledger.close()
        if c._settings is not None:
            await delete_topology(c._settings)
