"""The end of a study: its best trials on the test split (their scores at the paper's attack parameters, their
checkpoints), their audit (strong attacks and masking checks, the base audited beside them), and their comparison
with the base, sample by sample, in `best.json` and `audit.json`. Every number here is computed in fp32 by the
one evaluator (`trainables.pipeline.evaluate_model`) or the audit, where the GPU is (a Ray task when the cluster
has one)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from analysis import versus_base
from analysis.tables import test_line
from study.cluster import run_where_gpu
from study.errors import StudyError
from study.spec import StudySpec
from trainables.atomic import atomic_write_text
from trainables.checkpoint import load_checkpoint, save_checkpoint
from trainables.config import (
    AttackCfg,
    AuditCfg,
    DataCfg,
    ObjectiveCfg,
    paper_attacks,
    trial_cfgs,
    trial_config,
)
from trainables.vocab import Objective, decode_outcomes

VAL_KEYS = ("objective", "val_clean_acc", "val_pgd_acc", "val_paper_pgd_acc", "val_robust_auc")


def objective_measure(objective: ObjectiveCfg) -> str:
    """The objective (resolved) in words, for the comparison with the base: which attack, how strong."""
    o = objective
    if o.metric is Objective.ROBUST_AUC:
        return (f"on the study's objective, robust AUC over eps {', '.join(f'{e:g}' for e in o.eps_grid)} "
                f"(PGD-{o.steps}, alpha = 2.5 eps / {o.steps})")
    attack = o.pgd()
    reach = "" if attack.reaches_eps else ", cannot reach eps"
    starts = f" x{o.restarts}" if o.restarts > 1 else ""
    return f"under the study's objective, PGD-{o.steps}{starts} at eps {attack.eps:g} (alpha {attack.alpha:g}{reach})"


def audit_measure(cfg: AuditCfg, eps: float) -> str:
    """The audit's worst case in words: every attack it takes the worst of, AutoAttack's non-reference parts named."""
    strong = cfg.strong(eps)
    aa = ""
    if cfg.autoattack:
        reference = AuditCfg()
        parts = [] if cfg.components == reference.components else [", ".join(c.value for c in cfg.components)]
        if "square" in (c.value for c in cfg.components) and cfg.square_queries != reference.square_queries:
            parts.append(f"Square {cfg.square_queries} queries")
        aa = ", AutoAttack" + (f" ({'; '.join(parts)})" if parts else "")
    return (f"at the audit's worst case at eps {eps:g} (paper FGSM, IFGSM-10 and PGD-10, PGD-{strong.steps} x"
            f"{strong.restarts}{aa})")


def _evaluate_remote(arch: str, cfg: DataCfg, state: dict[str, Any], attacks: list[AttackCfg],
                     base_state: dict[str, Any], objective: ObjectiveCfg, seed: int,
                     channels: int | None = None) -> tuple[dict[str, Any], dict[str, list[float]]]:
    """The trial's weights on the test split, and the trial's and the base's per-sample objective on the
    validation subset (scored as the trials were: same attacks, seed and images)."""
    from trainables.data import load_data
    from trainables.evaluation import accuracies
    from trainables.models import InputSpec, build_model
    from trainables.perf import pick_device
    from trainables.pipeline import evaluate_model
    from trainables.scoring import objective_samples

    data = load_data(cfg)
    device = pick_device()
    models = {}
    for who, weights in (("trial", state), ("base", base_state)):
        models[who] = build_model(arch, InputSpec.of(data.info), channels=channels)
        models[who].load_state_dict(weights)
    acc = accuracies(evaluate_model(models["trial"], data.test, attacks, device=device))
    val = {who: objective_samples(m, data.val, objective, device=device, seed=seed) for who, m in models.items()}
    return ({"n": len(data.test), "device": str(device), "accuracy": {a.name.value: acc[a.label] for a in attacks},
             "attacks": {a.name.value: a.describe() for a in attacks}}, val)


def evaluate_trial_on_test(spec: StudySpec, row: dict[str, Any], base_path: Path, rank: int) -> dict[str, Any]:
    """The trial's last checkpoint on the test split at the paper's attack parameters (as a Ray task where the GPU
    is), saved as best.pt (best-2.pt, ...) with the trial's settings, and compared with the base on validation."""
    import torch


    ckpt_dirs = sorted(Path(row["path"]).glob("checkpoint_*"))
    if not ckpt_dirs:
        raise StudyError(f"trial {row['trial_id']} has no checkpoint in {row['path']}")
    state = torch.load(ckpt_dirs[-1] / "state.pt", map_location="cpu", weights_only=True)["model"]
    info = spec.data.info  # the paper's eps where it has one (comparable with its Table 1), else the study's
    attacks = paper_attacks(spec.data.dataset, eps=info.paper_eps if info.paper_eps is not None else spec.objective.eps)
    base = load_checkpoint(base_path)
    test, val = run_where_gpu(_evaluate_remote, spec.arch, spec.data, state, attacks, base.state_dict, spec.objective,
                              spec.seed, base.channels, cpus=spec.resources.cpus_per_trial)
    config = trial_config(row)
    train, aug, method = trial_cfgs(config, jitter=spec.search.jitter)
    model = base.build()
    model.load_state_dict(state)
    path = spec.study_dir() / ("best.pt" if rank == 0 else f"best-{rank + 1}.pt")
    save_checkpoint(path, model, {
        **{k: base.meta.get(k) for k in ("arch", "dataset", "image_size", "data", "input")},
        "kind": "finetune", "init": "base", "train": train.to_json(), "method": method.describe(),
        "augment": aug.to_json() if aug is not None else None,
        "study": spec.name, "trial_id": row["trial_id"], "test_acc": test["accuracy"]["clean"],
    })
    print(f"best trial {row['trial_id']} ({row['optimizer']}, lr {row['lr']:.2e}): test ({test['n']} images) "
          + test_line(test), flush=True)
    return {
        "trial_id": row["trial_id"],
        "optuna_number": row.get("optuna_number"),
        "config": config,
        "val": {k: row.get(k) for k in VAL_KEYS},
        "test": test,
        "vs_base": {"val": versus_base.compare(val["trial"], val["base"], split="val",
                                              measure=objective_measure(spec.objective))},
        "checkpoint": str(path),
    }


def _audit_remote(ckpt_paths: list[str], base_path: str, data_cfg: DataCfg, cfg: AuditCfg,
                  eps: list[float]) -> tuple[list[list[dict[str, Any]]], list[dict[str, Any]]]:
    """Every checkpoint's audit reports (one list per checkpoint), and the base's attack rows on the same images
    (no masking checks) for the paired comparison; data and base are loaded once."""
    from trainables.data import load_data
    from trainables.perf import pick_device
    from trainables.pipeline import audit_model

    data = load_data(data_cfg)
    base = load_checkpoint(base_path).build()
    device = pick_device()
    n = len(data.split(cfg.split.value))
    print(f"auditing the base on {n} {cfg.split.value} images (attacks only, for the comparison)", flush=True)
    base_reports = audit_model(base, data, cfg, eps, device=device, checks=False, progress=False)
    out = []
    for path in ckpt_paths:
        name = Path(path).name
        print(f"auditing {name} on {n} {cfg.split.value} images at eps " + ", ".join(f"{e:g}" for e in eps), flush=True)

        def log(msg: str, name: str = name) -> None:
            print(f"audit {name}: {msg}", flush=True)

        out.append(audit_model(load_checkpoint(path).build(), data, cfg, eps, device=device, base=base,
                               progress=False, log=log))
    return out, base_reports


def audit_best(spec: StudySpec, entries: list[dict[str, Any]], base_path: Path) -> Path:
    """`patchtune audit` of each best trial's checkpoint (strong attacks + masking checks) -> audit.json; each
    entry gains `vs_base.test`: its worst case against the base's, sample by sample, at every eps."""
    a = spec.audit
    eps = list(a.eps or ())
    data = spec.data.replace(**{f"limit_{a.split.value}": a.limit})
    per_entry, base_reports = run_where_gpu(_audit_remote, [e["checkpoint"] for e in entries], str(base_path), data,
                                            a, eps, cpus=spec.resources.cpus_per_trial)
    audits = []
    for entry, reports in zip(entries, per_entry, strict=True):
        for rep in reports:
            print(f"audit of {entry['trial_id']}: eps {rep['eps']:g}: paper PGD-10 "
                  f"{100 * next(r['acc'] for r in rep['rows'] if r['name'] == 'paper_pgd10'):.2f} %, worst case "
                  f"{100 * rep['worst_case_acc']:.2f} %, masking checks {rep['verdict']}", flush=True)
        entry.setdefault("vs_base", {})["test"] = [
            versus_base.compare(decode_outcomes(rep["worst_case_mask"]), decode_outcomes(base_rep["worst_case_mask"]),
                                split=a.split.value, measure=audit_measure(a, e))
            for rep, base_rep, e in zip(reports, base_reports, eps, strict=True)]
        audits.append({"trial_id": entry["trial_id"], "checkpoint": entry["checkpoint"], "audits": reports,
                       "vs_base": entry["vs_base"]["test"]})
    path = spec.study_dir() / "audit.json"
    atomic_write_text(path, json.dumps({"study": spec.name, "base": str(base_path), "base_audits": base_reports,
                                        "trials": audits}, indent=2))
    return path
