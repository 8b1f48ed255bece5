"""Connecting to Ray, and running one-off work where the GPU is.

Studies and reproductions connect through `ray_session` (the connection this process already has, a fresh
local instance with the dashboard bound to 127.0.0.1, or a cluster address probed first so a wrong one fails
in seconds). One-off jobs (pretraining a base, scoring the best trials on the test split, the audit) go
through `run_where_gpu`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from study.errors import StudyError

T = TypeVar("T")


@contextlib.contextmanager
def ray_session(address: str | None, dashboard: bool, dashboard_host: str = "127.0.0.1") -> Iterator[None]:
    """Ray for the length of a `with` block. A process already connected (a notebook or script that called
    `ray.init` itself, or a test session) keeps its connection, which is left open afterwards; otherwise
    `ray_init` connects and the block shuts Ray down on the way out, error or not."""
    import ray

    if address is None and ray.is_initialized():
        yield
        return
    ray_init(address, dashboard, dashboard_host)
    try:
        yield
    finally:
        ray.shutdown()


def ray_init(address: str | None, dashboard: bool, dashboard_host: str = "127.0.0.1") -> None:
    """Connect to the cluster at `address` (probed first), or start a fresh local Ray instance."""
    import ray

    kwargs: dict[str, Any] = {"log_to_driver": True, "configure_logging": True, "logging_level": logging.WARNING}
    if address:
        probe(address)
        try:
            ray.init(address=address, **kwargs)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise StudyError(f"--address {address!r}: cannot connect to a Ray cluster there "
                             f"({str(exc).splitlines()[0][:160]})") from None
        return
    # A fresh local instance ("local" ignores a stale ray_current_cluster file). The dashboard binds to
    # 127.0.0.1 only: Ray's Jobs API runs code for whoever reaches it (CVE-2023-48022).
    context = ray.init(address="local", include_dashboard=dashboard, dashboard_host=dashboard_host, **kwargs)
    if dashboard:
        print(f"Ray dashboard: http://{context.dashboard_url}", flush=True)
        if os.environ.get("RAY_AUTH_MODE", "").lower() == "token":  # Ray >= 2.60 turns it on for a local instance
            print("  token authentication is on: the page asks for a token; paste what `ray get-auth-token` prints "
                  "(HTTP clients: header 'Authorization: Bearer <token>')", flush=True)


def probe(address: str, timeout: float = 5.0) -> None:
    """Fail in seconds when nothing listens at HOST:PORT (ray.init would retry for minutes first)."""
    target = address.split("://", 1)[-1]
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():
        return  # "auto" and other forms: Ray resolves them itself, and fails fast when there is nothing
    try:
        socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=timeout).close()
    except OSError as exc:
        raise StudyError(f"--address {address!r}: nothing answers at {host}:{port} ({exc.strerror or exc})") from None


def gpus_for_task() -> float:
    """One GPU for the one-off tasks (pretraining, test evaluation) when the cluster has any."""
    import ray

    gpus = float(ray.cluster_resources().get("GPU", 0))  # type: ignore[no-untyped-call]
    return 1.0 if gpus >= 1 else 0.0


def run_where_gpu(fn: Callable[..., T], *args: Any, cpus: float = 1.0, driver_without_gpu: bool = True) -> T:
    """`fn(*args)` as a Ray task on a GPU worker when the cluster has GPUs, else here in the driver.

    Without a GPU anywhere, the driver is as good a place as any worker, and it already holds the data: a task
    would only add start-up time. `driver_without_gpu=False` keeps a CPU-only run a Ray task too (long jobs
    that should land on a worker node). Needs a connected Ray (`ray_init`).
    """
    import ray

    gpus = gpus_for_task()
    if not gpus and driver_without_gpu:
        return fn(*args)
    task = ray.remote(num_cpus=max(1.0, cpus), num_gpus=gpus)(fn)
    result: T = ray.get(task.remote(*args))
    return result
