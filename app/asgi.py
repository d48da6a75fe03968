"""The ASGI entry point uvicorn imports (one app per worker process)."""

import gc

from app.main import create_app

app = create_app()

# Everything imported so far (SQLAlchemy's and pydantic's machinery, the routes, the policy) lives as
# long as the worker. Frozen, the cyclic collector stops re-walking it: full collections that a push
# batch's allocations trigger cost ~100 ms each (under SQLite's write lock, when they fell there) and
# now ~15 ms (bench/push_phases.py: ~10 ms less per 100-op batch). Only here, in serving workers:
# tests build hundreds of apps in one process and must be able to collect them.
gc.collect()
gc.freeze()
