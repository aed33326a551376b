"""Local S3-compatible server for development, tests and the benchmark: moto behind cheroot.

``python -m moto.server`` runs moto's WSGI application on Werkzeug's development server,
which answers every request with ``Connection: close``: every S3 call opens a new TCP
connection, unlike MinIO or AWS, at a CPU cost on both sides, so the benchmark's storage
ceiling and the workers' per-message (kernel) CPU are not representative.
This module serves the same application (same in-memory state, ``/moto-api/`` included)
from one process on cheroot's multi-threaded HTTP/1.1 server, which keeps connections
alive, and memoises moto's per-request backend look-up. Without cheroot installed (or with
``--server werkzeug``) it serves the way ``moto.server`` does.

    python -m etl_devtools.dev_s3 -H 127.0.0.1 -p 9000
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from types import FrameType
from typing import Any

THREADS = 16  # request handler threads; idle keep-alive connections do not hold one
KEEP_ALIVE_CONNECTIONS = 1024  # cheroot's default (10) would close a busy fleet's extra ones
IDLE_TIMEOUT_S = 30  # an idle connection is closed after this, as real S3 servers do
WRITE_PIECE = 256 * 1024


def make_app() -> Any:
    """moto's server application, as ``moto.server`` builds it, with host look-ups memoised.

    moto maps every request to a backend by scanning its package directory (a ``stat`` per
    service module, ~180 per request) and then its URL patterns; both are fixed while the
    server runs, so the answer per host is kept (it was over half of the application's CPU
    per GET + PUT).
    """
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

    class App(DomainDispatcherApplication):
        def __init__(self) -> None:
            super().__init__(create_backend_app)
            self._backends: dict[str | None, Any] = {}

        def get_backend_for_host(self, host: str | None) -> Any:
            try:
                return self._backends[host]
            except KeyError:
                pass
            backend = super().get_backend_for_host(host)
            if len(self._backends) > 4096:
                self._backends.clear()
            self._backends[host] = backend
            return backend

    app = App()
    app.debug = True  # type: ignore[attr-defined]
    return app


def serve_werkzeug(host: str, port: int) -> None:
    """The fallback, as ``moto.server`` serves: Werkzeug's server, one connection per request."""
    from moto.moto_server.werkzeug_app import MotoRequestHandler
    from werkzeug.serving import run_simple

    def interrupt(_signum: int, _frame: FrameType | None) -> None:
        sys.exit(0)

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, interrupt)
    run_simple(host, port, make_app(), threaded=True, request_handler=MotoRequestHandler)


def _moto_gateway() -> type:
    """cheroot's WSGI gateway with moto's header handling (``MotoRequestHandler``).

    Like moto on Werkzeug: an underscored header never stands in for the dashed one, other
    underscored headers are dropped, except S3 object metadata, whose spelling moto keeps.
    """
    from cheroot import wsgi
    from moto.core.request import (
        PRESERVED_HEADER_NAMES_ENVIRON_KEY,
        environ_key_for_header,
        should_preserve_original_header_name,
    )

    class MotoGateway(wsgi.Gateway_10):
        def get_environ(self) -> dict[str, Any]:  # type: ignore[override]
            env: dict[str, Any] = super().get_environ()
            headers = [(k.decode("latin-1"), v.decode("latin-1"))
                       for k, v in self.req.inheaders.items()]
            dashed = {environ_key_for_header(k): v for k, v in headers if "_" not in k}
            names: dict[str, str] = {}
            for name, value in headers:
                if "_" not in name:
                    continue
                key = environ_key_for_header(name)
                if key in dashed:
                    env[key] = dashed[key]
                elif should_preserve_original_header_name(name):
                    names[key] = name
                    env[key] = value
                else:
                    env.pop(key, None)
            env[PRESERVED_HEADER_NAMES_ENVIRON_KEY] = names
            return env

        def write(self, chunk: bytes) -> None:
            # cheroot's socket writer copies what is left of a chunk after every partial
            # send (quadratic: ~1.5 s for a 100 MB GET); pieces keep each copy small.
            if len(chunk) <= WRITE_PIECE:
                super().write(chunk)
                return
            view = memoryview(chunk)
            for start in range(0, len(view), WRITE_PIECE):
                super().write(view[start:start + WRITE_PIECE])

    return MotoGateway


def serve_cheroot(host: str, port: int) -> None:
    from cheroot import wsgi

    server = wsgi.Server((host, port), make_app(), numthreads=THREADS, timeout=IDLE_TIMEOUT_S,
                         request_queue_size=128, shutdown_timeout=1, server_name="etl-dev-s3")
    server.gateway = _moto_gateway()
    server.keep_alive_conn_limit = KEEP_ALIVE_CONNECTIONS

    def interrupt(_signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt  # leaves server.start() in the main thread

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, interrupt)
    try:
        server.start()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


def have_cheroot() -> bool:
    try:
        import cheroot.wsgi  # noqa: F401
    except ImportError:
        return False
    return True


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m etl_devtools.dev_s3", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-H", "--host", default="127.0.0.1", help="address to bind")
    parser.add_argument("-p", "--port", type=int,
                        default=int(os.environ.get("MOTO_PORT", "5000")), help="port")
    parser.add_argument("--server", choices=("cheroot", "werkzeug"), default="cheroot",
                        help="werkzeug: moto.server's way, a new connection per request")
    args = parser.parse_args(argv)
    os.environ.setdefault("MOTO_PORT", str(args.port))  # as moto.server does
    if args.server == "cheroot" and not have_cheroot():
        print("dev_s3: cheroot is not installed (pip install -e '.[dev]'); serving the way "
              "moto.server does, a new connection per request", file=sys.stderr, flush=True)
        args.server = "werkzeug"
    if args.server == "cheroot":
        serve_cheroot(args.host, args.port)
    else:
        serve_werkzeug(args.host, args.port)


if __name__ == "__main__":
    main()
