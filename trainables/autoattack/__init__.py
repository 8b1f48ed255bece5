"""AutoAttack's four L-inf components (Croce & Hein 2020, arXiv:2003.01690), written from the reference code.

    apgd      APGD-CE and APGD-T (targeted DLR loss): one step-size-adapting, momentum PGD loop
    fab       FAB-T: minimal-perturbation attack by linearised projections onto the decision boundary
    square    Square: score-based random search, no gradients (Andriushchenko et al. 2020, arXiv:1912.00049)

They follow fra31/auto-attack (through its torchattacks port, which the audit used before) operation for
operation, so the same seed gives the same examples per sample; their randomness comes from a private CPU
`torch.Generator`, never the global RNG, and is moved to the input's device, so a CPU and a GPU run draw the
same starts. Each takes a model in eval mode and pixels in [0, 1], and returns examples that the caller checks
against the threat set and re-scores (`trainables.strong_attacks`).
"""

from trainables.autoattack.apgd import apgd_ce, apgd_targeted
from trainables.autoattack.fab import fab_targeted
from trainables.autoattack.square import square

__all__ = ["apgd_ce", "apgd_targeted", "fab_targeted", "square"]
