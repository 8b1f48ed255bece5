"""Reproduction tables and findings on synthetic frames, and the evaluation settings on a real tiny model (the
tiny end-to-end `patchtune reproduce` is in test_end_to_end.py)."""

from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import pandas as pd
import pytest
import torch
from repro_frame import CELLS, repro_frame
from torch import nn

from analysis.repro_tables import fmt_count, paper_by_method, robust_table, settings_table, table1, table2
from analysis.reproduction import findings, matching_setting, paired, render, robust_findings
from trainables.augment import make_generator
from trainables.config import AugCfg, Dataset, paper_attacks
from trainables.evaluation import accuracies
from trainables.pipeline import evaluate_model
from trainables.variants import VARIANTS, AlwaysTrainMode, RandomPatchModel, variant_probes
from trainables.vocab import encode_outcomes


def frame(seeds: int = 3, rmsprop_gain: float = 0.05) -> pd.DataFrame:
    return repro_frame(seeds=seeds, rmsprop_gain=rmsprop_gain)


def test_table1_puts_the_paper_beside_ours() -> None:
    t = table1(frame(), "fmnist")
    short = " (cannot reach eps: alpha x steps = 0.1 < 0.3)"  # the paper's alpha 0.01 x 10 steps at F-MNIST's eps
    assert list(t["Attack"]) == ["Clean", "FGSM", "IFGSM" + short, "PGD-10" + short]
    assert list(table1(frame(), "cifar10")["Attack"]) == ["Clean", "FGSM", "IFGSM", "PGD-10"]  # 0.1 > eps 0.03
    assert t.loc[3, "adam (paper)"] == "53.72" and t.loc[3, "rmsprop (paper)"] == "50.08"
    assert t.loc[3, "adam (ours)"].startswith("10.0") and "±" in t.loc[3, "adam (ours)"]


def test_findings_use_paired_tests_over_seeds() -> None:
    c = paired(frame(), "patch_rmsprop", "patch_adam", "whitebox/pgd")
    assert c.n == 3 and c.diff == pytest.approx(5.0, abs=0.5) and c.lo < c.diff < c.hi and c.p < 0.05
    text = findings(frame(), "fmnist")
    assert text[0].startswith("RMSProp beats Adam under PGD-10 on F-MNIST: yes, +")
    assert any("beats the paper's PGD-AT under PGD-10 on F-MNIST: no" in s for s in text)
    one = findings(frame(seeds=1), "fmnist")
    assert "undecided (too few seeds (n=1) for a paired t over seeds" in one[0]


def test_findings_pair_per_image_where_the_results_carry_it() -> None:
    """The issue's 2-seed case, on per-image outcomes: RMSProp's fine-tune gains +1.4 pt over Adam's under FGSM in
    both seeds (30 images only it gets right, 23 only Adam's). The t-test over the two seeds saw no variance and
    printed "yes ... p=1.6e-16"; the finding now says undecided, and why. With a third seed it is decided per
    seed and image, with the images' noise in its interval."""
    rng = np.random.default_rng(4)

    def with_outcomes(seeds: int) -> pd.DataFrame:
        f = frame(seeds=seeds)
        outcomes = {}
        for s in range(seeds):
            adam = rng.random(500) < 0.6
            rms = adam.copy()
            order = rng.permutation(500)
            only_rms = 30 if s < 2 else 26  # a third seed gains +0.6 pt
            rms[order[:only_rms]], adam[order[:only_rms]] = True, False
            rms[order[only_rms:only_rms + 23]], adam[order[only_rms:only_rms + 23]] = False, True
            outcomes[("patch_adam", s)], outcomes[("patch_rmsprop", s)] = adam, rms
        f["per_image"] = [json.dumps({"whitebox/fgsm": encode_outcomes(outcomes[(m, s)])})
                          if (m, s) in outcomes else None for m, s in zip(f["cell"], f["seed"], strict=True)]
        for (m, s), v in outcomes.items():
            f.loc[(f.cell == m) & (f.seed == s), "whitebox/fgsm"] = v.mean()
        return f

    two = findings(with_outcomes(2), "fmnist")
    fgsm = next(s for s in two if s.startswith("RMSProp beats Adam under FGSM on F-MNIST"))
    assert fgsm == ("RMSProp beats Adam under FGSM on F-MNIST: undecided (every seed gives the same difference "
                    "(+1.4 pt): seed-to-seed variation cannot be estimated from 2 seeds; difference +1.4 pt).")
    three = findings(with_outcomes(3), "fmnist")
    fgsm = next(s for s in three if s.startswith("RMSProp beats Adam under FGSM on F-MNIST"))
    assert fgsm.endswith("(seeds x images, n=3 seeds x 500 images).") and "p=1" not in fgsm
    # rows without per-image outcomes (PGD-10 here) fall back to the t-test over seeds
    assert next(s for s in three if "under PGD-10 on F-MNIST" in s).endswith("(paired t-test, n=3 seeds).")


def test_strong_pgd_row_and_overstatement_finding() -> None:
    f = frame()
    assert "strong PGD-100 x5 (ours only)" not in set(table1(f, "fmnist")["Attack"])  # older results: no row
    f["strong/pgd"] = f["whitebox/pgd"] - 0.08  # the strong attack finds 8 pt more in every seed: no variance
    f["strong_steps"], f["strong_restarts"] = 100, 5
    text = findings(f, "fmnist")
    assert any(s.startswith("The paper's PGD-10 overstates the robustness of the paper's PGD-AT on F-MNIST (PGD-10 "
                            "minus strong PGD-100 x5): undecided (every seed gives the same difference (+8.0 pt)") for s in text), text
    f["strong/pgd"] = f["whitebox/pgd"] - 0.08 - 0.01 * f["seed"]  # 8, 9 and 10 pt more
    t = table1(f, "fmnist")
    assert list(t["Attack"])[-1] == "strong PGD-100 x5 (ours only)" and t.iloc[-1]["adam (paper)"] == "-"
    assert t.iloc[-1]["adam (ours)"].startswith("1.")
    text = findings(f, "fmnist")
    assert any(s.startswith("The paper's PGD-10 overstates the robustness of the paper's PGD-AT on F-MNIST (PGD-10 "
                            "minus strong PGD-100 x5): yes, +9.0 pt") for s in text), text
    # the label is the attack the results record, not a fixed name
    f["strong_steps"], f["strong_restarts"] = 40, 1
    assert list(table1(f, "fmnist")["Attack"])[-1] == "strong PGD-40 (ours only)"
    assert "alpha = 2.5 eps / 40 steps, 1 random start;" in render(f, "fmnist")


def test_robust_findings_ask_the_optimizer_question_within_each_method() -> None:
    f = repro_frame(strong=True)
    text = robust_findings(f, "fmnist")
    at = "on F-MNIST at eps 0.3 (PGD-100 x5)"
    pgd = [s for s in text if "under PGD-5-AT fine-tuning" in s]
    assert [s.split(" under")[0] for s in pgd] == ["RMSProp beats Adam", "SGD beats Adam", "SGD beats RMSProp"]
    diff = [float(re.search(r": \w+(?: \w+)?, ([+-][\d.]+) pt \[", s).group(1)) for s in pgd]
    assert diff == pytest.approx([6.0, -10.0, -16.0], abs=0.8)  # per-attack noise of 0.2 pt
    assert pgd[0].startswith(f"RMSProp beats Adam under PGD-5-AT fine-tuning {at}: yes, +")
    assert pgd[0].endswith("(paired t-test, n=3 seeds).")
    assert pgd[1].startswith(f"SGD beats Adam under PGD-5-AT fine-tuning {at}: no, -")
    fgsm = [s for s in text if "under FGSM-RS fine-tuning" in s]
    assert len(fgsm) == 3 and all(re.search(r", [+-]0\.[0-5] pt", s) for s in fgsm)  # one level for every optimizer
    assert f"PGD-5-AT + RMSProp fine-tuning raises robust accuracy over the undefended model {at}: yes, +2" in \
        "\n".join(text)
    # without a strong attack the optimizer question is asked under PGD-10, and says so
    assert "(PGD-10): " in robust_findings(repro_frame(), "fmnist")[0]
    assert not robust_findings(repro_frame(cells=[m for m in CELLS if m[:3] not in ("pgd", "fgs")]), "fmnist")


def test_robust_table_and_report_section() -> None:
    f = repro_frame(strong=True)
    t = robust_table(f, "fmnist")
    assert list(t["model"]) == ["undefended", "patch + Adam", "patch + RMSProp", "FGSM-RS + Adam", "FGSM-RS + RMSProp",
                                "FGSM-RS + SGD", "PGD-5-AT + Adam", "PGD-5-AT + RMSProp", "PGD-5-AT + SGD"]
    row = t.set_index("model").loc["PGD-5-AT + RMSProp"]
    strong, pgd10 = row["PGD-100 x5, eps 0.3"], row["PGD-10 (cannot reach eps: alpha x steps = 0.1 < 0.3)"]
    assert float(strong.split(" ± ")[0]) == pytest.approx(28.0, abs=0.3) and float(pgd10.split(" ± ")[0]) == pytest.approx(36.0, abs=0.3)
    assert row["forward passes"] == "0.12M" and t.set_index("model").loc["undefended", "train device-s"] == "0"
    assert t.set_index("model").loc["patch + Adam", "forward passes"] == "40k"
    text = render(f, "fmnist")
    assert "## Robust fine-tuning: does the optimizer matter?" in text and "RMSProp beats Adam under PGD-5-AT" in text
    old = f.drop(columns=["cost_device_s", "cost_fwd_passes", "cost_bwd_passes"])
    assert "## Robust fine-tuning" in render(old, "fmnist")  # older results: no compute columns, still a table
    assert "train device-s" not in robust_table(old, "fmnist").columns
    assert fmt_count(1200) == "1.2k" and fmt_count(0) == "0" and fmt_count(3.6e6) == "3.6M"


def test_the_robust_part_of_the_grid_alone_renders() -> None:
    """`--grid robust`: the undefended model, the paper's two patch fine-tunes and the robust cells only."""
    from trainables.cells import reproduction_grid
    from trainables.vocab import GridPart

    f = repro_frame(cells=[c.cell for c in reproduction_grid(part=GridPart.ROBUST)], strong=True)
    text = render(f, "fmnist")
    assert "RMSProp beats Adam under PGD-10 on F-MNIST" in text and "RMSProp beats Adam under PGD-5-AT" in text
    assert [c for c in table2(f, "fmnist").columns if c.endswith("(ours)")] == ["proposed (ours)"]
    assert list(settings_table(f, "fmnist")["model"]) == ["undefended", "adam", "rmsprop"]


def test_matching_setting_names_the_setting_near_the_paper() -> None:
    text = matching_setting(frame(), "fmnist")
    assert "eps in normalised units on adam (53.0 % vs paper 53.7 %)" in text
    assert "white-box" not in text
    st = settings_table(frame(), "fmnist")
    assert list(st["model"]) == ["undefended", "adam", "rmsprop", "adam (long)", "rmsprop (long)"] and "paper" in st.columns
    assert "## Table 1 (fmnist)" in render(frame(), "fmnist")


def test_metadata_not_cell_names_decide_the_tables() -> None:
    """Renamed cells in a shuffled frame give the same report: which cell is which comes from the metadata."""
    f = repro_frame(strong=True)
    renamed = f.assign(cell="cell" + f["cell"].map({m: str(i) for i, m in enumerate(CELLS)}))
    renamed = renamed.sample(frac=1, random_state=3).reset_index(drop=True)
    assert render(renamed, "cifar10") == render(f, "cifar10")


def test_table2_columns_follow_the_paper() -> None:
    t = table2(frame(), "cifar10")
    assert [c for c in t.columns if c.endswith("(ours)")] == ["paper_fgsm_at (ours)", "paper_ifgsm_at (ours)",
                                                             "paper_pgd_at (ours)", "proposed (ours)"]
    assert t.loc[2, "proposed (paper)"] == "60.37" and " ± " in t.loc[2, "proposed (ours)"]
    assert float(t.loc[2, "proposed (ours)"].split(" ± ")[0]) == pytest.approx(15.0, abs=0.5)  # patch + RMSProp
    assert set(table2(frame(), "fmnist")["paper_pgd_at (paper)"]) == {"-"}  # the paper's Table 2 is CIFAR-10 only


def test_grid_without_long_cells_or_metadata() -> None:
    short = repro_frame(cells=[m for m in CELLS if not m.endswith("_long")])
    assert list(settings_table(short, "fmnist")["model"]) == ["undefended", "adam", "rmsprop"]
    assert paper_by_method(short, "fmnist", defended_only=True) == {
        "patch_adam": {"fgsm": 87.51, "ifgsm": 88.21, "pgd": 53.72},
        "patch_rmsprop": {"fgsm": 85.73, "ifgsm": 84.38, "pgd": 50.08}}
    assert paper_by_method(short, "fmnist")["undefended"]["clean"] == 91.49
    with pytest.raises(ValueError, match="table1_column"):
        table1(short.drop(columns=["table1_column"]), "fmnist")


def test_evaluation_settings_on_a_real_model(trained_cnn3, fmnist_small) -> None:
    test = fmnist_small.test.take(slice(0, 60))
    attacks = paper_attacks(Dataset.FMNIST, ("fgsm", "pgd"))
    cpu = torch.device("cpu")
    probes, generator = variant_probes(trained_cnn3, trained_cnn3, attacks, aug=AugCfg(patch_size=8), pixel_std=0.353,
                                       device=cpu, seed=0, eot_draws=2)
    scores = accuracies(evaluate_model(trained_cnn3, test, probes, device=cpu, batch_size=250, generator=generator))
    assert set(scores) == {"clean", "ttt/clean"} | {f"{v}/{a}" for v in VARIANTS for a in ("fgsm", "pgd")}
    for key, value in scores.items():
        limit = scores["ttt/clean"] if key.startswith("ttt") else scores["clean"]
        assert 0.0 <= value <= limit + 1e-9, key
    # a third of the budget leaves an undefended model far more accurate than the full one
    assert scores["normeps/pgd"] > scores["whitebox/pgd"] + 0.1


def test_every_kind_of_cell_runs_without_ray(trained_cnn3, fmnist_small) -> None:
    """`run_cell`, the body of a reproduction trial, on each kind of cell: the base itself, a long patch fine-tune,
    the paper's PGD-AT from a fresh init, and a robust fine-tuning method. Scores, per-image outcomes and
    training compute agree; from-scratch adversarial training ignores the base's weights."""
    from trainables.cells import reproduction_grid
    from trainables.config import Method, Optimizer, strong_pgd
    from trainables.evaluation import robust_masks
    from trainables.reproduce_cell import ReproSetup, run_cell
    from trainables.vocab import GridPart

    base = {k: v.detach().clone() for k, v in trained_cnn3.state_dict().items()}
    setup = ReproSetup(arch="cnn3", info=fmnist_small.info, train=fmnist_small.train.take(slice(0, 64)),
                       val=fmnist_small.val.take(slice(0, 16)), test=fmnist_small.test.take(slice(0, 8)),
                       bases={0: base}, lr=1e-3, epochs=1,
                       batch_size=32, aug=AugCfg(patch_size=8), attacks=paper_attacks(Dataset.FMNIST, ("pgd",)), eps=0.3,
                       eot_draws=2, long_epochs=2, at_from_scratch_epochs=1, strong=strong_pgd(0.3, 3))
    cells = {c.cell: c for c in reproduction_grid((Method.PGD_AT,), (Optimizer.ADAM,), GridPart.ALL)}
    cpu = torch.device("cpu")
    # forward passes per image: none; patch (2 images) x 2 epochs; PGD-10 + 1, 1 epoch; PGD-5 + 1, 1 epoch
    expected = {"undefended": 0, "patch_adam_long": 64 * 2 * 2, "paper_pgd_at": 64 * 11, "pgd_at_adam": 64 * 6}
    out = {m: run_cell(0, cells[m], setup, cpu) for m in expected}
    for method, scores in out.items():
        assert scores["cost_fwd_passes"] == expected[method], method
        assert (scores["cost_device_s"] > 0) == (method != "undefended"), method
        per_image = json.loads(scores["per_image"])
        assert set(per_image) == {"clean", "ttt/clean", "strong/pgd"} | {f"{v}/pgd" for v in VARIANTS}
        for key, outcome in per_image.items():
            assert len(outcome) == 8 and outcome.count("1") / 8 == pytest.approx(scores[key]), (method, key)
    # the undefended cell is the base: it scores the base's clean accuracy on these images
    right = robust_masks(trained_cnn3, setup.test, {}, device=cpu)["clean"]
    assert json.loads(out["undefended"]["per_image"])["clean"] == encode_outcomes(right.tolist())
    # PGD-AT from a fresh init: the same model whatever the seed's base (only `transfer`, crafted on it, differs)
    zeros = {k: torch.zeros_like(v) for k, v in base.items()}
    zero_base = run_cell(0, cells["paper_pgd_at"], dataclasses.replace(setup, bases={0: zeros}), cpu)
    assert json.loads(zero_base["per_image"])["whitebox/pgd"] == json.loads(out["paper_pgd_at"]["per_image"])["whitebox/pgd"]
    assert zero_base["clean"] == out["paper_pgd_at"]["clean"]


def test_wrappers() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(4, 3))
    wrapped = AlwaysTrainMode(net)
    wrapped.eval()
    x = torch.ones(64, 1, 2, 2)
    assert not torch.equal(wrapped(x), wrapped(x)), "dropout stays on inside eval()"
    lin = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    ttt = RandomPatchModel(lin, AugCfg(pool=("occlude",), patch_size=2), make_generator(0), draws=3)
    out = ttt(torch.rand(5, 1, 4, 4))
    assert out.shape == (5, 2)
