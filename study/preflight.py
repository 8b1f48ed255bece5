"""Everything a user can get wrong about a study, checked before Ray starts and before anything is written.

`preflight(spec)` validates data, base checkpoint, study directory and Optuna storage for a new study;
`load_study_spec(dir)` reads an existing study's spec back. Problems become one-line `StudyError`s.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

import optuna
import yaml

from analysis.load import open_optuna_storage
from study import tracking
from study.bases import base_cache_path
from study.errors import StudyError
from study.spec import StudySpec, parse_spec
from trainables.checkpoint import Checkpoint, CheckpointError, load_checkpoint
from trainables.config import ConfigError
from trainables.data import DataBundle, load_data
from trainables.zoo import check_inputs, fetch_weights, is_weights_file


@dataclasses.dataclass
class Prepared:
    spec: StudySpec  # resolved
    data: DataBundle
    base_path: Path | None  # None: the base is pretrained first (cached at `base_cache`)
    base_cache: Path
    base: Checkpoint | None = None  # the given base, read (a plain state dict is written into the study directory)


def _check_writable(path: Path, what: str) -> None:
    ancestor = path
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        raise StudyError(f"{what} {path} cannot be created: {ancestor} is not a writable directory")


def check_optuna_storage(spec: StudySpec, *, fresh: bool) -> None:
    """The storage opens, and (for a new study) holds no study of this name; never a silent reuse."""
    url = spec.optuna_url()
    if url.startswith("sqlite:///") and spec.optuna_storage is None:
        return  # the default lives inside the new study directory, which is checked to be absent
    try:
        storage = open_optuna_storage(url)
        summaries = optuna.get_all_study_summaries(storage, include_best_trial=False)
    except Exception as exc:
        raise StudyError(f"optuna_storage {url!r} cannot be opened: {str(exc).splitlines()[0][:200]}") from None
    wanted = 1 + len(spec.objective.extra_objectives)
    for summary in summaries:
        if summary.study_name != spec.name:
            continue
        if len(summary.directions) != wanted:
            raise StudyError(f"Optuna study {spec.name!r} in {url} has {len(summary.directions)} objective(s), "
                             f"this spec has {wanted}; choose another name")
        if fresh:
            raise StudyError(f"Optuna study {spec.name!r} already exists in {url}; choose another --name "
                             "(or `patchtune resume` its study directory)")


def preflight(spec: StudySpec) -> Prepared:
    """Validate data, base checkpoint and storage for a new study, writing nothing."""
    info = spec.data.info
    if spec.objective.eps is None and info.paper_eps is None:
        print(f"objective.eps: the paper does not cover {info.name.value}, so it has no paper eps; the study takes "
              f"{info.default_eps:.4f} ({info.eps_source}); set objective.eps to choose another", file=sys.stderr,
              flush=True)
    spec = spec.resolved()
    weights = spec.base.weights
    if weights is not None and is_weights_file(weights):  # the Ray task that pretrains may run elsewhere
        spec = spec.replace(base=spec.base.replace(weights=os.path.abspath(os.path.expanduser(weights))))
    study_dir = spec.study_dir()
    if study_dir.exists() and any(study_dir.iterdir()):
        raise StudyError(f"study directory {study_dir} already exists; `patchtune resume {study_dir}` continues it, "
                         "or choose another --name / --storage")
    _check_writable(study_dir, "study directory")
    if spec.optuna_storage and spec.optuna_storage.startswith("journal:"):
        _check_writable(Path(spec.optuna_storage.removeprefix("journal:")).expanduser(), "journal file")
    if spec.data.root is not None and not Path(spec.data.root).is_dir():
        raise StudyError(f"data.root {spec.data.root!r} is not a directory")
    check_optuna_storage(spec, fresh=True)
    tracking.check(spec)
    check_inputs(spec.arch, spec.data.info)  # the arch's name too
    if spec.base.weights is not None:  # weights that cannot be had stop here, not in Ray
        fetch_weights(spec.arch, spec.base.weights)
    base = None
    if spec.base.checkpoint is not None:
        try:
            base = load_checkpoint(Path(spec.base.checkpoint).expanduser().resolve(), arch=spec.arch,
                                   dataset=spec.data.dataset)
        except CheckpointError as exc:
            raise StudyError(f"base.checkpoint: {exc}") from None
    data = load_data(spec.data)
    if base is not None:
        try:
            base.build(data.info)  # a state dict that does not fit the arch or the classes stops here
        except CheckpointError as exc:
            raise StudyError(f"base.checkpoint: {exc}") from None
        assert base.path is not None
        return Prepared(spec, data, base.path, base.path, base)
    assert spec.model.arch is not None and spec.base.pretrain is not None
    return Prepared(spec, data, None, base_cache_path(spec.storage, spec.model.arch, spec.data, spec.base.pretrain,
                                                      spec.base.weights))


def load_study_spec(study_dir: Path) -> StudySpec:
    """A study directory's spec (resolved when it was written)."""
    path = study_dir / "spec.yaml"
    if not path.is_file():
        raise StudyError(f"{study_dir} is not a patchtune study directory (no spec.yaml)")
    try:
        spec = parse_spec(yaml.safe_load(path.read_text()))
    except (yaml.YAMLError, ConfigError) as exc:
        raise StudyError(f"{path} is unreadable: {exc}") from None
    here = study_dir.expanduser().resolve()
    if spec.study_dir() != here and here.name == spec.name:
        # A relative `storage` means the directory it was run from; read from elsewhere (or after a move), the
        # study is where it is: its default Optuna storage and result files follow it.
        spec = spec.replace(storage=str(here.parent))
    return spec
