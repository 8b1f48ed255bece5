# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # The role of the optimizer in patch fine-tuning, and where there is robustness to explain
#
# Table 1 of Agarwal, Vatsa & Singh (AAAI 2021) beside our numbers; the same optimizer question asked of robust
# fine-tuning (FGSM-RS, PGD-AT), which does buy robustness; and how sensitive robustness is to the optimizer and
# the other knobs of a `patchtune run` study. Set `PATCHTUNE_STUDY_DIR` (a study directory) and
# optionally `PATCHTUNE_REPRO_DIR` (a `patchtune reproduce` directory) before running; the notebook only
# arranges what `analysis.*` computes.

# %% tags=["parameters"]
import os

STUDY_DIR = os.environ.get("PATCHTUNE_STUDY_DIR", "runs/studies/quick")
REPRO_DIR = os.environ.get("PATCHTUNE_REPRO_DIR", "")

# %%
from pathlib import Path

import pandas as pd
from IPython.display import Markdown, display

from analysis import grid, plots, repro_plots, tables
from analysis.load import epochs_long, load_reproduction_files, load_study
from analysis.report import optimizer_finding, optuna_importances
from analysis.repro_tables import robust_axis_label, robust_measure, robust_table, table1
from analysis.reproduction import findings, robust_findings

study = load_study(STUDY_DIR)  # the study's files as the tidy frames the plots take, and its verdict
print(f"study {study.name}: {len(study.results)} trials, objective {study.objective}")
print(study.verdict or "study incomplete: no verdict yet")

# %% [markdown]
# ## Table 1

# %%
repro = None
dataset = study.dataset
if REPRO_DIR and Path(REPRO_DIR, "results.parquet").is_file():
    repro = load_reproduction_files(REPRO_DIR)[1]
    display(Markdown("### Table 1 (reproduction, mean ± 95 % CI over seeds)\n\n" + tables.markdown(table1(repro, dataset))))
    display(Markdown("\n".join(f"- {s}" for s in findings(repro, dataset))))
if study.best:
    rows = [{"trial": e["trial_id"], "optimizer": e["config"]["optimizer"], **{k: round(100 * v, 2) for k, v in e["test"]["accuracy"].items()}}
            for e in study.best["trials"]]
    display(Markdown("### Best study trial(s) on the test split\n\n" + tables.markdown(pd.DataFrame(rows))))

# %% [markdown]
# ## Does the optimizer matter where there is robustness? (reproduction)
#
# The patch fine-tunes beside robust fine-tuning methods, each with Adam, RMSProp and SGD at the paper's lr (one lr
# for every optimizer, as the paper compared them; the study below tunes lr per optimizer) and the patch
# fine-tunes' epochs, judged by a PGD that reaches the paper's eps. Each pair compared per seed and per image.

# %%
if repro is not None and grid.robust_cells(repro):
    key, robust_label = robust_measure(repro)[0], robust_axis_label(repro, dataset)
    display(Markdown(tables.markdown(robust_table(repro, dataset))))
    display(Markdown("\n".join(f"- {s}" for s in robust_findings(repro, dataset))))
    # figures made in a cell are shown once by the inline backend: no display() (it would show them twice)
    repro_plots.optimizer_bars(repro, key, robust_label)
    if "cost_device_s" in repro:
        repro_plots.reproduction_cost(repro, key, robust_label)
else:
    print("no robust fine-tuning cells in the reproduction (PATCHTUNE_REPRO_DIR unset, or an older run)")

# %% [markdown]
# ## Optimizer sensitivity (study)

# %%
results = study.results[study.results["status"] != "FAILED"]
label = study.objective_label  # which attack, how strong, on which split
fig = plots.robust_vs_lr(results, "objective", label)

# %%
fig = plots.robust_by_optimizer(results, "objective", label)

# %%
fig = plots.optimizer_patch_heatmap(results, "objective", label)

# %%
fig = plots.transform_effect(results, "objective", label)

# %%
fig = plots.clean_vs_robust(results)

# %%
fig = plots.learning_curves(epochs_long(study.epochs, study.results), "objective", label)

# %%
importances = optuna_importances(study)
if importances:
    plots.param_importances(importances)
print(optimizer_finding(study))
