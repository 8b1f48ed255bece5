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
# # Patch fine-tuning vs adversarial training (Table 2)
#
# The paper compares its fine-tuning with FGSM-, IFGSM- and PGD-AT on CIFAR-10 (Table 2). This notebook shows
# a `patchtune reproduce` directory's version of that table, with every model also scored under the evaluation
# settings that could explain the paper's numbers. Set `PATCHTUNE_REPRO_DIR` before running.

# %% tags=["parameters"]
import os

REPRO_DIR = os.environ.get("PATCHTUNE_REPRO_DIR", "runs/reproductions/latest")

# %%
from IPython.display import Markdown, display

from analysis import repro_plots, tables
from analysis.load import load_reproduction_files
from analysis.repro_tables import SETTING_LABELS, SETTINGS, paper_by_method, settings_table, table2
from analysis.reproduction import findings

meta, results = load_reproduction_files(REPRO_DIR)  # reproduction.json and results.parquet
dataset = meta["data"]["dataset"]
print(f"{dataset}: {results['seed'].nunique()} seeds x {results['cell'].nunique()} cells")

# %% [markdown]
# ## Table 2

# %%
display(Markdown(tables.markdown(table2(results, dataset))))

# %%
fig = repro_plots.method_bars(results, paper=paper_by_method(results, dataset), dataset=dataset)

# %% [markdown]
# ## PGD-10 under each evaluation setting

# %%
display(Markdown(tables.markdown(settings_table(results, dataset))))
fig = repro_plots.settings_bars(results, SETTINGS, SETTING_LABELS, paper=paper_by_method(results, dataset, defended_only=True))

# %%
display(Markdown("\n".join(f"- {s}" for s in findings(results, dataset))))
