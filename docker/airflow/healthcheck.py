"""Container health check for the hrnn Airflow image: one script for every Airflow component.

Usage: ``python /opt/hrnn/healthcheck.py [COMPONENT]`` with COMPONENT one of ``api-server``,
``scheduler``, ``dag-processor``, ``triggerer``, ``worker``. Without it, the component is read
from PID 1's command line (e.g. ``/sbin/docker-init -- airflow scheduler``), so the image's
HEALTHCHECK works for ``docker run`` too. Commands that are no long-running component
(``airflow db migrate``, ``airflow version``, a shell) report healthy: there is nothing to check.

Exit 0 = healthy, 1 = unhealthy (Docker's convention). Standard library only (no curl in the
slim base image).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import urllib.request

COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer", "worker")
TIMEOUT_S = 15.0  # each probe; the Dockerfile's HEALTHCHECK --timeout is larger


def detect_component(argv: list[str]) -> str | None:
    """The Airflow component a command line runs, or None for anything else."""
    if "celery" in argv and "worker" in argv:
        return "worker"
    if "airflow" not in " ".join(argv):
        return None
    for name in ("api-server", "scheduler", "dag-processor", "triggerer"):
        if name in argv:
            return name
    return None


def pid1_argv() -> list[str]:
    try:
        with open("/proc/1/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as resp:  # noqa: S310 (fixed URL)
            return resp.status == 200
    except OSError:
        return False


def command_ok(argv: list[str]) -> bool:
    try:
        done = subprocess.run(argv, capture_output=True, timeout=TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def probe(component: str) -> list[str] | str:
    """What to check for a component: a URL (str) or a command (list)."""
    env = os.environ
    if component == "api-server":
        port = env.get("AIRFLOW__API__PORT", "8080")
        return f"http://127.0.0.1:{port}/api/v2/version"
    if component == "scheduler":
        # Needs AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK=True (set in the image).
        port = env.get("AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT", "8974")
        return f"http://127.0.0.1:{port}/health"
    if component in ("dag-processor", "triggerer"):
        job = "DagProcessorJob" if component == "dag-processor" else "TriggererJob"
        # --local: this host's job only (hostname_callable), so replicas are checked one by one.
        return ["airflow", "jobs", "check", "--job-type", job, "--local"]
    if component == "worker":
        # Celery's default node name is celery@<hostname>; ping only this worker.
        return [
            "celery", "--app", "airflow.providers.celery.executors.celery_executor.app",
            "inspect", "ping", "--destination", f"celery@{socket.gethostname()}",
        ]
    raise ValueError(f"unknown component {component!r}; expected one of {COMPONENTS}")


def main(args: list[str]) -> int:
    component = args[0] if args else detect_component(pid1_argv())
    if component is None:
        return 0
    if component not in COMPONENTS:
        print(f"healthcheck: unknown component {component!r}; expected one of {COMPONENTS}")
        return 1
    target = probe(component)
    ok = http_ok(target) if isinstance(target, str) else command_ok(target)
    if not ok:
        print(f"healthcheck: {component} unhealthy ({target})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
