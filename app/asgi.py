"""The ASGI entry point uvicorn imports (one app per worker process)."""

import gc
import logging

from app.main import create_app

# The service's loggers ("firegrid", "firegrid.sweep", "firegrid.db"; "app.*" by module name).
SERVICE_LOGGERS = ("firegrid", "app")


def log_to_stderr() -> None:
    """The service's own lines at INFO on stderr, as gunicorn and uvicorn write theirs: an escalation, a
    password set, a warning at start-up. Nothing else configures these loggers in a server, and Python
    dropped their INFO lines (its last-resort handler takes warnings only, without time or level). A
    deployment that configures logging itself (a handler on the root logger) keeps its own."""
    if logging.getLogger().handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s",
                                           "%Y-%m-%d %H:%M:%S %z"))
    for name in SERVICE_LOGGERS:
        log = logging.getLogger(name)
        if not log.handlers:
            log.addHandler(handler)
            log.setLevel(logging.INFO)


log_to_stderr()
app = create_app()

# Everything imported so far (SQLAlchemy's and pydantic's machinery, the routes, the policy) lives as
# long as the worker. Frozen, the cyclic collector stops re-walking it: full collections that a push
# batch's allocations trigger cost ~100 ms each (under SQLite's write lock, when they fell there) and
# now ~15 ms (bench/push_phases.py: ~10 ms less per 100-op batch). Only here, in serving workers:
# tests build hundreds of apps in one process and must be able to collect them.
gc.collect()
gc.freeze()
