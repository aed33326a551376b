"""The worker's sidecar: probes, health document, metrics, token-guarded admin routes."""

from __future__ import annotations

import asyncio
import socket
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator

import orjson
import pytest

from etl_engine import __version__
from etl_engine.runtime.sidecar import Sidecar
from etl_engine.runtime.worker import WorkerState
from helpers import WorkerProcess, delete_topology, running_worker

TOKEN = "s3cret-admin-token-of-32-chars-or-more"


def _request(port: int, path: str, method: str = "GET", token: str | None = None
             ) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


async def call(port: int, path: str, method: str = "GET", token: str | None = None
               ) -> tuple[int, dict[str, str], bytes]:
    """Off the event loop: the sidecar under test serves on this very loop."""
    return await asyncio.to_thread(_request, port, path, method, token)


def healthy_state() -> WorkerState:
    state = WorkerState(worker_id="w-test")
    state.broker_connected = state.consuming = state.redis_ok = state.s3_ok = True
    return state


@pytest.fixture
async def sidecar() -> AsyncIterator[tuple[Sidecar, WorkerState, list[str]]]:
    state = healthy_state()
    calls: list[str] = []

    async def drain() -> tuple[int, str, bytes]:
        calls.append("drain")
        state.draining = True
        return 200, "application/json", b'{"draining": true}'

    car = Sidecar(state, host="127.0.0.1", port=0, admin_token=TOKEN,
                  admin_routes={"/admin/drain": drain})
    await car.start()
    yield car, state, calls
    await car.stop()


async def test_live_follows_the_heartbeat_only(sidecar) -> None:  # type: ignore[no-untyped-def]
    car, state, _ = sidecar
    state.broker_connected = state.redis_ok = state.s3_ok = False  # dependencies down
    status, _, body = await call(car.port, "/live")
    assert status == 200 and orjson.loads(body)["live"] is True
    state.heartbeat = time.monotonic() - 60  # the loop stopped beating
    status, _, body = await call(car.port, "/live")
    assert status == 503 and orjson.loads(body)["live"] is False


async def test_ready_names_failing_components_and_draining(sidecar) -> None:  # type: ignore[no-untyped-def]
    car, state, _ = sidecar
    status, _, body = await call(car.port, "/ready")
    assert status == 200 and orjson.loads(body) == {"ready": True, "failing": []}
    state.redis_ok = False
    state.s3_ok = False
    status, _, body = await call(car.port, "/ready")
    assert status == 503
    assert set(orjson.loads(body)["failing"]) == {"redis", "s3"}
    state.redis_ok = state.s3_ok = True
    state.draining = True
    status, _, body = await call(car.port, "/ready")
    assert status == 503 and "draining" in orjson.loads(body)["failing"]


async def test_health_document(sidecar) -> None:  # type: ignore[no-untyped-def]
    car, state, _ = sidecar
    state.in_flight = 3
    state.last_error_class = "PermanentError:not_avro"
    status, headers, body = await call(car.port, "/health")
    doc = orjson.loads(body)
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert doc["service"] == "etl-narrative-engine"
    assert doc["version"] == __version__
    assert doc["worker_id"] == "w-test"
    assert doc["uptime_s"] >= 0
    assert doc["components"] == {"rabbitmq": "up", "consumer": "up", "redis": "up", "s3": "up"}
    assert doc["in_flight"] == 3
    assert doc["last_error_class"] == "PermanentError:not_avro"
    state.broker_connected = False
    status, _, body = await call(car.port, "/health")
    assert status == 503 and orjson.loads(body)["components"]["rabbitmq"] == "down"


async def test_metrics_is_prometheus_text(sidecar) -> None:  # type: ignore[no-untyped-def]
    car, _, _ = sidecar
    status, headers, body = await call(car.port, "/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=")
    text = body.decode()
    assert "# TYPE etl_messages_total counter" in text
    assert f'etl_build_info{{version="{__version__}"}} 1.0' in text


async def test_admin_routes_need_post_and_the_token(sidecar) -> None:  # type: ignore[no-untyped-def]
    car, state, calls = sidecar
    assert (await call(car.port, "/admin/drain", "POST"))[0] == 401
    assert (await call(car.port, "/admin/drain", "POST", token="wrong"))[0] == 401
    assert (await call(car.port, "/admin/drain", "GET", token=TOKEN))[0] == 405
    assert calls == [] and not state.draining
    status, _, body = await call(car.port, "/admin/drain", "POST", token=TOKEN)
    assert status == 200 and orjson.loads(body) == {"draining": True}
    assert calls == ["drain"]
    assert (await call(car.port, "/ready"))[0] == 503


async def test_without_a_token_there_are_no_admin_routes() -> None:
    called = []

    async def drain() -> tuple[int, str, bytes]:
        called.append(1)
        return 200, "text/plain", b""

    car = Sidecar(healthy_state(), host="127.0.0.1", port=0, admin_token="",
                  admin_routes={"/admin/drain": drain})
    await car.start()
    try:
        for token in (None, "", "anything"):
            assert (await call(car.port, "/admin/drain", "POST", token=token))[0] == 404
    finally:
        await car.stop()
    assert called == []


async def test_methods_unknown_paths_head_and_garbage(sidecar) -> None:  # type: ignore[no-untyped-def]
    car, _, _ = sidecar
    assert (await call(car.port, "/nope"))[0] == 404
    assert (await call(car.port, "/health", "POST"))[0] == 405
    status, headers, body = await call(car.port, "/live", "HEAD")
    assert status == 200 and body == b"" and int(headers["Content-Length"]) > 0

    def garbage() -> bytes:
        with socket.create_connection(("127.0.0.1", car.port), timeout=5) as s:
            s.sendall(b"NONSENSE\r\n\r\n")
            return s.recv(1024)

    assert (await asyncio.to_thread(garbage)).startswith(b"HTTP/1.1 400")


# --- with a real worker ------------------------------------------------------------------
@pytest.mark.integration
async def test_worker_ready_uses_cached_checks(settings) -> None:  # type: ignore[no-untyped-def]
    try:
        async with running_worker(settings.model_copy(update={"sidecar_host": "127.0.0.1"})
                                  ) as worker:
            port = worker.state.sidecar_port
            for _ in range(100):
                if (await call(port, "/ready"))[0] == 200:
                    break
                await asyncio.sleep(0.1)
            pings = 0
            real_ping = worker.dedup.ping

            async def counting_ping() -> None:
                nonlocal pings
                pings += 1
                await real_ping()

            worker.dedup.ping = counting_ping  # type: ignore[method-assign]
            for _ in range(20):
                status, _, body = await call(port, "/ready")
                assert status == 200, body
            assert pings <= 1, "probes answer from cached state, not a Redis round trip each"
            doc = orjson.loads((await call(port, "/health"))[2])
            assert doc["worker_id"] == settings.effective_worker_id
            assert doc["components"] == {"rabbitmq": "up", "consumer": "up", "redis": "up",
                                         "s3": "up"}
    finally:
        await delete_topology(settings)


@pytest.mark.integration
async def test_worker_not_ready_without_redis_but_live(settings) -> None:  # type: ignore[no-untyped-def]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    broken = settings.model_copy(update={
        "sidecar_host": "127.0.0.1", "dedup_url": f"redis://127.0.0.1:{dead_port}/0"})
    try:
        async with running_worker(broken) as worker:
            port = worker.state.sidecar_port
            body = b""
            for _ in range(100):
                status, _, body = await call(port, "/ready")
                if status == 503 and orjson.loads(body)["failing"] == ["redis"]:
                    break
                await asyncio.sleep(0.1)
            assert orjson.loads(body)["failing"] == ["redis"], body
            assert (await call(port, "/live"))[0] == 200
            status, _, body = await call(port, "/health")
            assert status == 503 and orjson.loads(body)["components"]["redis"] == "down"
    finally:
        await delete_topology(settings)


@pytest.mark.integration
async def test_worker_process_binds_from_settings_and_drains_via_admin(
    settings, test_env, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    w = WorkerProcess(test_env, tmp_path / "w.log", ETL_ADMIN_TOKEN=TOKEN)
    try:
        await w.wait_ready()
        assert (await call(w.port, "/admin/drain", "POST"))[0] == 401
        status, _, _ = await call(w.port, "/admin/drain", "POST", token=TOKEN)
        assert status == 200
        assert await w.wait_exit(30) == 0
    finally:
        if w.proc.poll() is None:
            w.kill()
        await delete_topology(settings)
    listening = [line for line in w.log_lines() if line.get("event") == "sidecar_listening"]
    assert listening and listening[0]["port"] == w.port and listening[0]["host"] == "127.0.0.1"
    assert listening[0]["event_loop"] == "uvloop"  # ETL_EVENT_LOOP=auto with uvloop installed


# --- hardening: connection cap, timeouts, loop lag, token length ---------------------------
async def test_idle_connections_cannot_lock_the_probes_out() -> None:
    """Beyond max_connections the oldest connection is closed: /live still answers."""
    car = Sidecar(healthy_state(), host="127.0.0.1", port=0, max_connections=8,
                  io_timeout_s=30)
    await car.start()
    idle: list[socket.socket] = []
    try:
        for _ in range(50):
            idle.append(socket.create_connection(("127.0.0.1", car.port), timeout=5))
            await asyncio.sleep(0)
        t0 = time.monotonic()
        status, _, body = await call(car.port, "/live")
        assert status == 200 and orjson.loads(body)["live"] is True
        assert time.monotonic() - t0 < 1
        assert car.evicted >= 40 and len(car._open) <= 8
    finally:
        for s in idle:
            s.close()
        await car.stop()


async def test_a_silent_connection_times_out() -> None:
    car = Sidecar(healthy_state(), host="127.0.0.1", port=0, io_timeout_s=0.2)
    await car.start()

    def silent() -> bytes:
        with socket.create_connection(("127.0.0.1", car.port), timeout=5) as s:
            return s.recv(1024)  # the server answers 400 and closes after the timeout

    try:
        t0 = time.monotonic()
        assert (await asyncio.to_thread(silent)).startswith(b"HTTP/1.1 400")
        assert time.monotonic() - t0 < 2
        for _ in range(50):  # the handler finishes just after the client saw the answer
            if not car._open:
                break
            await asyncio.sleep(0.01)
        assert car._open == {}
    finally:
        await car.stop()


async def test_the_heartbeat_measures_event_loop_lag() -> None:
    from etl_engine.observability.metrics import EVENT_LOOP_LAG, REGISTRY
    from etl_engine.runtime.sidecar import beat

    def over(bound: float) -> float:
        total = REGISTRY.get_sample_value("etl_event_loop_lag_seconds_count") or 0.0
        le = REGISTRY.get_sample_value("etl_event_loop_lag_seconds_bucket", {"le": str(bound)})
        return total - (le or 0.0)

    assert EVENT_LOOP_LAG is not None
    state = healthy_state()
    before = over(0.25)
    task = asyncio.create_task(beat(state, interval=0.05))
    try:
        await asyncio.sleep(0.12)
        time.sleep(0.4)  # a blocked loop: the timer wakes ~0.4 s late
        await asyncio.sleep(0.12)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert over(0.25) == before + 1
    assert time.monotonic() - state.heartbeat < 0.2


def test_a_short_admin_token_is_a_config_error() -> None:
    from etl_engine.settings import ConfigError, load_settings

    with pytest.raises(ConfigError, match="ETL_ADMIN_TOKEN"):
        load_settings(admin_token="short", env="development")
    assert load_settings(admin_token="x" * 32, env="development").admin_token
    assert load_settings(env="development").sidecar_host == "127.0.0.1"
