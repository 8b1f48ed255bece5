"""Shared fixtures: real Fashion-MNIST (small subsets) and a tiny cnn3 trained once per session."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from filelock import FileLock
from hypothesis import settings

from trainables.config import DataCfg, TrainCfg
from trainables.data import DataBundle, load_data
from trainables.models import InputSpec, build_model
from trainables.perf import pick_device
from trainables.training import fit

# Each pytest-xdist worker gets its share of the cores: more threads than cores only thrash.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, (os.cpu_count() or 1) // _WORKERS)))

# The suite gives the same result on every run: property tests draw a fixed sequence of examples (derandomize) and
# keep no example database between runs. `HYPOTHESIS_PROFILE=explore make test` searches fresh examples instead;
# whatever it finds goes into the suite as an explicit case.
settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.register_profile("explore", max_examples=500, database=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


# `make test` runs the files on two pytest-xdist workers (`--dist loadfile`): each file runs whole on one
# worker, a process with its own session fixtures and its own local Ray. The longest files go first.
_LONGEST_FIRST = ("test_end_to_end.py", "test_own_model_data.py", "test_study.py", "test_benchmarks.py", "test_reliability.py",
                  "test_cli.py", "test_methods.py", "test_audit.py", "test_replay.py", "test_attacks.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    order = {name: i for i, name in enumerate(_LONGEST_FIRST)}
    items.sort(key=lambda item: order.get(item.path.name, len(order)))  # stable: tests keep their order in a file


def shared_file(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None]) -> Path:
    """A file built once per test session and shared by the pytest-xdist workers: whichever worker asks first
    builds it (under a lock), the others read it (the pattern of pytest-xdist's docs)."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the workers' base temp dirs share this parent
    path = root / name
    with FileLock(f"{path}.lock"):
        if not path.is_file():
            build(path)
    return path


@pytest.fixture(scope="session")
def device() -> torch.device:
    # CPU by default; TORCH_DEVICE=cuda runs the same suite on a GPU.
    return pick_device(os.environ.get("TORCH_DEVICE", "cpu"))


@pytest.fixture(scope="session")
def fmnist_small() -> DataBundle:
    """Real F-MNIST: 4000 train / 500 val / 500 test images."""
    return load_data(DataCfg(limit_train=4000, limit_val=500, limit_test=500))


def spec_of(data: DataBundle) -> InputSpec:
    return InputSpec.of(data.info)


@pytest.fixture(scope="session")
def trained_cnn3(fmnist_small: DataBundle, device: torch.device,
                 tmp_path_factory: pytest.TempPathFactory) -> torch.nn.Module:
    """cnn3 after 2 epochs on 4000 real images (~80% clean accuracy): undefended, easy to attack. Trained once
    per session (on the CPU, so every worker gets the same weights) and loaded by each worker."""

    def train(path: Path) -> None:
        torch.manual_seed(0)
        model = build_model("cnn3", spec_of(fmnist_small))
        fit(model, fmnist_small.train, fmnist_small.val, TrainCfg(epochs=2, lr=2e-3, batch_size=64),
            device=torch.device("cpu"), progress=False)
        torch.save(model.state_dict(), path)

    model = build_model("cnn3", spec_of(fmnist_small))
    model.load_state_dict(torch.load(shared_file(tmp_path_factory, "trained_cnn3.pt", train), weights_only=True))
    return model.to(device).eval()


@pytest.fixture
def cnn3_in_train_mode(trained_cnn3: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """The shared trained cnn3 switched to train mode (attacks must switch to eval and back), restored to eval
    whatever the test does, so a failing test cannot leave the session fixture in the wrong mode."""
    trained_cnn3.train()
    try:
        yield trained_cnn3
    finally:
        trained_cnn3.eval()


def ensure_local_ray() -> None:
    """One local Ray instance per test file for its in-process studies: `study.cluster.ray_session` uses a
    connection the process already has and leaves it open, so each study skips Ray's start-up and shutdown.
    Tests that need their own instance (a multi-node `Cluster`, the dashboard) shut this one down first; the
    next user restarts it."""
    import ray

    if not ray.is_initialized():
        from study.cluster import ray_init

        ray_init(None, dashboard=False)


@pytest.fixture
def local_ray() -> None:
    ensure_local_ray()


@pytest.fixture(scope="module", autouse=True)
def _shutdown_ray_after_each_file() -> Iterator[None]:
    # An idle local Ray costs ~7 % of a core (raylet, GCS, agents, idle workers): stop it when the file that
    # started it ends, not at the end of the session, so the worker's next (Ray-free) files get that core back.
    yield
    import sys

    if "ray" in sys.modules and sys.modules["ray"].is_initialized():
        sys.modules["ray"].shutdown()


@pytest.fixture(scope="session")
def base_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small real base checkpoint (cnn3, 1 epoch on 2000 F-MNIST images), made as a user makes one, by
    `patchtune pretrain` in its own process; built once per session and shared by the CLI and study tests."""
    import subprocess
    import sys

    def build(path: Path) -> None:
        proc = subprocess.run([sys.executable, "-m", "study.cli", "pretrain", "--dataset", "fmnist", "--epochs", "1",
                               "--limit-train", "2000", "--limit-val", "200", "--limit-test", "200", "--out", str(path),
                               "--quiet"], cwd=path.parent, capture_output=True, text=True, timeout=600,
                              env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), "PYTHONUNBUFFERED": "1"})
        assert proc.returncode == 0, proc.stderr
        assert "test acc" in proc.stderr, proc.stderr  # its summary line

    return shared_file(tmp_path_factory, "base_ckpt.pt", build)
