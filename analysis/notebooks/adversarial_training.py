# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
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
import json
from pathlib import Path

import pandas as pd
from IPython.display import Markdown, display

from analysis import plots
from analysis.paper import TABLE1
from analysis.reproduction import SETTING_LABELS, SETTINGS, findings, markdown_table, settings_table, table2

results = pd.read_parquet(Path(REPRO_DIR, "results.parquet"))
meta = json.loads(Path(REPRO_DIR, "reproduction.json").read_text())
dataset = meta["dataset"]
print(f"{dataset}: {results['seed'].nunique()} seeds x {results['method'].nunique()} methods")

# %% [markdown]
# ## Table 2

# %%
display(Markdown(markdown_table(table2(results, dataset))))

# %%
paper = TABLE1.get(dataset, {})
by_method = {m: {a: v[c] for a, v in paper.items() if c in v}
             for m, c in (("undefended", "undefended"), ("patch_adam", "adam"), ("patch_rmsprop", "rmsprop"))}
plots.method_bars(results, paper=by_method)

# %% [markdown]
# ## PGD-10 under each evaluation setting

# %%
display(Markdown(markdown_table(settings_table(results, dataset))))
plots.settings_bars(results, SETTINGS, SETTING_LABELS,
                    paper={m: v["pgd"] for m, v in by_method.items() if "pgd" in v and m != "undefended"})

# %%
display(Markdown("\n".join(f"- {s}" for s in findings(results, dataset))))
