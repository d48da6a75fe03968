"""`firegrid serve --workers N` (N > 1): gunicorn forking N uvicorn workers from a master that has
imported the app once.

uvicorn's own supervisor spawns each worker afresh, and each re-imports everything (SQLAlchemy,
pydantic, FastAPI, the routes): ~70 MB of private heap per worker. Forked from a master that has
imported the app (and frozen it for the collector, app/asgi.py), the workers share those pages
copy-on-write: the whole server, master included, measured 135-144 MB PSS against 164-167 with
uvicorn's supervisor (docs/PERFORMANCE.md). gunicorn also restarts a worker that dies.

Run as ``python -P -m app.serving --bind HOST:PORT --workers N`` (what `firegrid serve` execs): a
gunicorn application of its own rather than gunicorn's command line, which puts the working directory
on sys.path (a stray app/ there would shadow ours) and reads a gunicorn.conf.py found there.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import sys

from gunicorn.app.base import BaseApplication
from uvicorn_worker import UvicornWorker


class Worker(UvicornWorker):
    # ws none: the API has no WebSocket route, and "auto" imports a WebSocket library into every worker
    CONFIG_KWARGS = {"loop": "auto", "http": "auto", "ws": "none"}


PR_SET_PDEATHSIG = 1


def _die_with(master_pid: int) -> None:
    """SIGTERM this worker when its master dies, even by SIGKILL (the OOM killer, a container runtime):
    uvicorn's workers never check their parent, and an orphan would go on serving the port with the
    old code while a restarted server cannot bind it. Linux's parent-death signal; elsewhere nothing."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:  # pragma: no cover - always allowed
        return
    if os.getppid() != master_pid:  # it died before the signal was armed
        os.kill(os.getpid(), signal.SIGTERM)


def post_fork(server, worker) -> None:
    """In each new worker. A worker must not use a database connection the master opened (one socket,
    two processes): create_app() opens none; should that change, the worker drops the pool's inherited
    connections without closing them under the master (SQLAlchemy's advice for forked processes)."""
    import app.asgi

    _die_with(worker.ppid)
    app.asgi.app.state.db.engine.dispose(close=False)


class Server(BaseApplication):
    def __init__(self, bind: str, workers: int):
        self.options = {
            "bind": bind,
            "workers": workers,
            "worker_class": "app.serving.Worker",
            "preload_app": True,  # imported in the master, before the fork: the point of all this
            "accesslog": "-",  # one line per request on stdout, as uvicorn does by default
            "keepalive": 5,  # uvicorn's default (gunicorn's is 2 s): a phone's sync is many requests in a row
            "post_fork": post_fork,
            # no socket in $HOME for gunicornc: two servers on one machine (tests, benchmarks) would share it
            "control_socket_disable": True,
        }
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self):
        from app.asgi import app

        return app


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m app.serving", description=__doc__.split("\n\n")[0])
    ap.add_argument("--bind", default="127.0.0.1:8000")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args(argv)
    Server(args.bind, args.workers).run()


if __name__ == "__main__":
    main()
