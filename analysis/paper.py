"""Reference numbers from Agarwal, Vatsa & Singh (AAAI 2021), Tables 1 and 2, in percent."""

from __future__ import annotations

# Table 1: white-box accuracy (%) of undefended and fine-tuned CNNs. Keys: data set -> attack -> column.
TABLE1: dict[str, dict[str, dict[str, float]]] = {
    "fmnist": {
        "clean": {"undefended": 91.49},
        "fgsm": {"undefended": 11.41, "adam": 87.51, "rmsprop": 85.73},
        "ifgsm": {"undefended": 9.85, "adam": 88.21, "rmsprop": 84.38},
        "pgd": {"undefended": 3.06, "adam": 53.72, "rmsprop": 50.08},
    },
    "cifar10": {
        "clean": {"undefended": 83.91},
        "fgsm": {"undefended": 17.49, "adam": 43.69, "rmsprop": 65.93},
        "ifgsm": {"undefended": 14.70, "adam": 39.21, "rmsprop": 72.68},
        "pgd": {"undefended": 14.59, "adam": 34.45, "rmsprop": 60.37},
    },
    "imagenette": {
        "clean": {"undefended": 84.73},
        "fgsm": {"undefended": 17.47, "adam": 32.23, "rmsprop": 43.58},
        "ifgsm": {"undefended": 15.37, "adam": 30.52, "rmsprop": 43.97},
        "pgd": {"undefended": 14.60, "adam": 29.76, "rmsprop": 41.92},
    },
}

# Table 2: VGG on CIFAR-10, the paper's adversarial-training baselines (keyed by their method names) vs the
# proposed fine-tuning. attack -> column -> %.
TABLE2: dict[str, dict[str, float]] = {
    "fgsm": {"paper_fgsm_at": 39.96, "paper_ifgsm_at": 43.67, "paper_pgd_at": 36.30, "proposed": 65.93},
    "ifgsm": {"paper_fgsm_at": 35.08, "paper_ifgsm_at": 44.64, "paper_pgd_at": 34.63, "proposed": 72.68},
    "pgd": {"paper_fgsm_at": 32.12, "paper_ifgsm_at": 34.31, "paper_pgd_at": 37.93, "proposed": 60.37},
}


def paper_value(dataset: str, attack: str, column: str) -> float | None:
    """Table 1's number for (data set, attack, column) or None where the paper gives none."""
    return TABLE1.get(dataset, {}).get(attack, {}).get(column)
