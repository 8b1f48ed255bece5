"""Faults and bad input: a study survives node loss, refuses every malformed spec before Ray starts, writes
files atomically, and exposes nothing by default. (Driver loss, Ctrl-C and diverging trials are in
test_study.py.)"""

from __future__ import annotations

import copy
import hashlib
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import pytest
import torch
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from study.spec import read_spec_dict

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
CLI = [sys.executable, "-m", "study.cli"]


def _tiny(storage: Path, name: str, base: Path, **over: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": name, "storage": str(storage), "base": {"checkpoint": str(base)},
        "data": {"dataset": "fmnist", "limit_train": 400, "limit_val": 60, "limit_test": 100},
        "search": {"lr": {"adam": [1e-4, 1e-2]}, "batch_size": [64], "patch_size": [4, 10]},
        # one eps in the grid: these tests are about faults, and scoring 6 budgets per epoch would triple their time
        "epochs": 3, "objective": {"metric": "pgd_acc", "eps_grid": [0.05], "steps": 5},
        "num_samples": 4, "max_concurrent": 2, "max_failures": 2,
        "scheduler": {"type": "fifo"}, "sampler": {"type": "random"},
    }
    spec.update(over)
    return spec


def _intermediate_values(db: Path) -> int:
    try:
        with sqlite3.connect(db) as con:
            return int(con.execute("select count(*) from trial_intermediate_values").fetchone()[0])
    except sqlite3.Error:
        return 0


# ----------------------------------------------------------------------------------------- node loss


@pytest.mark.ray
@pytest.mark.slow
def test_study_spreads_over_nodes_and_survives_losing_one(tmp_path: Path, base_ckpt: Path) -> None:
    """Two nodes with (fake) GPUs, the head and a worker: trials are scheduled on both with fractional GPUs; the
    worker is then removed mid-trial, and its trial resumes from its checkpoint on the head."""
    import ray
    from ray.cluster_utils import Cluster

    from study.runner import run_study
    from study.settings import RayOptions
    from study.spec import parse_spec

    ray.shutdown()  # the suite's shared local instance, if up: this test connects to its own cluster
    # Fake GPUs: trials still run on CPU, but Ray schedules them by their fractional GPU request.
    cluster = Cluster(initialize_head=True, connect=False,
                      head_node_args={"num_cpus": 1, "num_gpus": 1, "include_dashboard": False})
    workers = [cluster.head_node, cluster.add_node(num_cpus=1, num_gpus=1)]
    cluster.wait_for_nodes()
    db = tmp_path / "lost" / "optuna.db"
    killed: list[float] = []

    def kill_a_worker() -> None:
        deadline = time.time() + 180
        while time.time() < deadline and _intermediate_values(db) < 2:  # both running trials reported an epoch
            time.sleep(0.2)
        cluster.remove_node(workers[1], allow_graceful=False)
        killed.append(time.time())

    killer = threading.Thread(target=kill_a_worker, daemon=True)
    killer.start()
    try:
        study_dir = run_study(parse_spec(_tiny(tmp_path, "lost", base_ckpt, num_samples=2,
                                               resources={"cpus_per_trial": 1, "gpus_per_trial": 0.5})),
                              RayOptions(address=cluster.address))
    finally:
        killer.join(timeout=5)
        ray.shutdown()
        cluster.shutdown()
    assert killed, "the worker was removed while the study ran"
    results = pd.read_parquet(study_dir / "results.parquet")
    assert len(results) == 2 and (results["status"] == "COMPLETE").all(), results[["trial_id", "status", "error"]]
    epochs = pd.read_parquet(study_dir / "epochs.parquet")
    for trial_id, rows in epochs.groupby("trial_id"):
        assert sorted(rows["training_iteration"]) == [1, 2, 3], f"{trial_id} lost or repeated an epoch"
    restored = epochs[epochs["iterations_since_restore"] < epochs["training_iteration"]]
    assert len(restored), "a trial resumed from its checkpoint on the surviving node"
    assert epochs["node_id"].nunique() >= 2, "trials ran on more than one node"
    assert torch.cuda.is_available() or set(epochs["device"]) == {"cpu (cpu)"}
    study = optuna.load_study(study_name="lost", storage=f"sqlite:///{db}")
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 2


# ----------------------------------------------------------------------------------------- bad input, fuzzed

_BAD_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8), st.lists(st.integers(-5, 5), max_size=3), st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    return out


@st.composite
def mutated_specs(draw: st.DrawFn) -> dict[str, Any]:
    raw = copy.deepcopy(read_spec_dict("quick"))
    raw["data"]["limit_train"] = 200
    paths = _paths(raw)
    kind = draw(st.sampled_from(["replace", "replace", "unknown_key", "delete"]))
    path = draw(st.sampled_from(paths))
    parent = raw
    for key in path[:-1]:
        parent = parent[key]
    if kind == "replace":
        parent[path[-1]] = draw(_BAD_VALUES)
    elif kind == "unknown_key":
        target = parent[path[-1]] if isinstance(parent[path[-1]], dict) else parent
        target[draw(st.text(alphabet="abcxyz_", min_size=1, max_size=6)) + "_zz"] = 1
    else:
        del parent[path[-1]]
    return raw


def _quick_with(**over: Any) -> dict[str, Any]:
    return {**read_spec_dict("quick"), **over}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=mutated_specs())
@example(raw=_quick_with(sampler=None))  # found by this test: once an AttributeError traceback
def test_every_spec_mutation_is_refused_cleanly_or_accepted(tmp_path_factory: pytest.TempPathFactory,
                                                            raw: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    from study.cli import main

    work = tmp_path_factory.mktemp("fuzz")
    raw = {**raw, "storage": str(work / "studies")} if isinstance(raw, dict) and "storage" in raw else raw
    spec = work / "spec.yaml"
    spec.write_text(yaml.safe_dump(raw))
    before = sorted(work.rglob("*"))
    code = main(["run", str(spec), "--dry-run"])
    captured = capsys.readouterr()
    assert code in (0, 2), captured.err
    if code == 2:
        lines = captured.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("patchtune run: error: "), captured.err
        assert "Traceback" not in captured.err
    assert sorted(work.rglob("*")) == before, "a dry run, valid or not, writes nothing"


# ----------------------------------------------------------------------------------------- atomic writes

_WRITER = """
import hashlib, os, sys
from trainables.atomic import atomic_write_bytes
target = sys.argv[1]
i = 0
while True:
    body = os.urandom(2_000_000)
    atomic_write_bytes(target, hashlib.sha256(body).hexdigest().encode() + b"\\n" + body)
    i += 1
"""


def test_a_kill_mid_write_leaves_the_old_or_the_new_file(tmp_path: Path) -> None:
    target = tmp_path / "results.bin"
    for delay in (0.05, 0.13, 0.21, 0.37, 0.5):
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(target)], env=ENV)
        time.sleep(delay + 0.3)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if target.exists():
            digest, _, body = target.read_bytes().partition(b"\n")
            assert hashlib.sha256(body).hexdigest().encode() == digest, "torn file"
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "results.bin"]
    assert all(re.fullmatch(r"\.results\.bin\..*\.tmp", n) for n in leftovers)  # only temp files, never the target


# ----------------------------------------------------------------------------------------- security defaults


@pytest.mark.ray
def test_dashboard_binds_to_localhost_and_its_api_answers_with_the_printed_token_hint(capsys) -> None:
    """The dashboard listens on 127.0.0.1 only; with Ray's token authentication (on by default for a local
    instance) its HTTP API refuses a request without the token and, given what `ray get-auth-token` prints
    (the hint `--dashboard` shows), lists the running actors, as a study's trial actors are listed."""
    import json
    import urllib.error
    import urllib.request

    import psutil
    import ray

    from study.cluster import ray_init

    ray.shutdown()  # the suite's shared instance, if up, has no dashboard
    ray_init(None, dashboard=True)
    try:
        dashboard = ray._private.worker.global_worker.node.address_info["webui_url"]
        host, port = dashboard.split(":")
        assert host == "127.0.0.1"
        listeners = [c.laddr for c in psutil.net_connections("tcp") if c.status == "LISTEN" and c.laddr.port == int(port)]
        assert listeners and all(addr.ip == "127.0.0.1" for addr in listeners), listeners
        printed = capsys.readouterr().out
        assert f"Ray dashboard: http://{dashboard}" in printed and "ray get-auth-token" in printed

        @ray.remote(num_cpus=0)
        class TrialLike:
            def ping(self) -> str:
                return "pong"

        actor = TrialLike.remote()  # type: ignore[attr-defined]
        assert ray.get(actor.ping.remote()) == "pong"
        url = f"http://{dashboard}/api/v0/actors?limit=100"
        # An opener of our own, without proxies: urllib's global one keeps the proxy settings of the first request
        # made in this process, whichever test made it. Ray reports the URL once the dashboard process runs;
        # under load its HTTP server may take a while longer.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        deadline = time.monotonic() + 90
        while True:
            try:
                opener.open(url, timeout=30)
            except urllib.error.HTTPError as exc:
                refused = exc
                break
            except urllib.error.URLError:
                assert time.monotonic() < deadline, f"the dashboard at {dashboard} never answered"
                time.sleep(1)
            else:
                pytest.fail("the dashboard's API answered without the token")
        assert refused.code in (401, 403)
        token = subprocess.run([str(Path(sys.executable).with_name("ray")), "get-auth-token"], capture_output=True,
                               text=True, check=True, timeout=60).stdout.strip()
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
        with opener.open(request, timeout=30) as response:
            actors = json.loads(response.read())["data"]["result"]["result"]
        assert any(a["class_name"].endswith("TrialLike") and a["state"] == "ALIVE" for a in actors), actors
    finally:
        ray.shutdown()


def test_no_unsafe_loads_in_the_code() -> None:
    pattern = re.compile(r"weights_only\s*=\s*False|pickle\.loads?\(|yaml\.load\(|yaml\.unsafe_load|(?<![\w.])(eval|exec)\(")
    hits = []
    for package in ("study", "trainables", "analysis"):
        for path in (ROOT / package).rglob("*.py"):
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if pattern.search(line):
                    hits.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not hits, "\n".join(hits)
    for package in ("study", "trainables", "analysis", "benchmarks"):
        for path in (ROOT / package).rglob("*.py"):
            for line in path.read_text().splitlines():
                if "torch.load(" in line:
                    assert "weights_only=True" in line, f"{path.name}: {line.strip()}"
