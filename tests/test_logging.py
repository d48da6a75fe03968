"""A server writes the service's own INFO lines (an escalation, a password set) to stderr with time and
level: nothing configured the `firegrid` logger, and Python dropped them."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _serve_import(tmp_path, code: str, before: str = "") -> subprocess.CompletedProcess:
    """In a fresh interpreter: ``before``, the ASGI entry point imported as a server worker imports it,
    then ``code``."""
    env = {"FIREGRID_DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}", "FIREGRID_STORAGE_DIR": str(tmp_path / "b"),
           "PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-c", f"import logging\n{before}\nimport app.asgi\n{code}"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def test_the_services_info_lines_reach_stderr_with_time_and_level(tmp_path):
    r = _serve_import(tmp_path, "logging.getLogger('firegrid.sweep').info('sweep escalated 3 hazards')\n"
                                "logging.getLogger('app.photos.staging').warning('refuses O_DIRECT')")
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    assert any(line.startswith("[20") and "[INFO] firegrid.sweep: sweep escalated 3 hazards" in line
               for line in lines), r.stderr
    assert any("[WARNING] app.photos.staging: refuses O_DIRECT" in line for line in lines), r.stderr


def test_a_deployments_own_logging_configuration_is_kept(tmp_path):
    r = _serve_import(tmp_path, "assert logging.getLogger('firegrid').handlers == []\n"
                                "logging.getLogger('firegrid').info('below the root level')\n"
                                "logging.getLogger('firegrid').warning('through the root handler')",
                      before="logging.basicConfig(format='ROOT %(message)s')")
    assert r.returncode == 0, r.stderr
    assert "ROOT through the root handler" in r.stderr and "below the root level" not in r.stderr, r.stderr
