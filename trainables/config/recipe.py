"""How a model is trained: the optimisation (`TrainCfg`, `PretrainCfg`) and the fine-tuning method (`MethodCfg`).

Defaults that depend on the architecture (the paper's learning rate and pretraining epochs) are null in the
settings and filled in by `resolved`, so a resolved record says what actually ran.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, StrictInt, model_validator
from typing_extensions import Self

from trainables.config.spine import Count, Flag, Positive, Settings, Share, Unit
from trainables.config.threat import AttackCfg, madry_alpha
from trainables.vocab import (
    METHODS,
    PAPER_ALPHA,
    PAPER_STEPS,
    AttackName,
    Method,
    Optimizer,
    arch_info,
    not_a_parameter,
)

FINETUNE_EPOCHS = 2  # the paper fine-tunes for "a few epochs"
ROBUST_AT_STEPS = 5  # PGD-AT / TRADES attack steps: alpha = 2.5 eps / 5 reaches 2 eps


class TrainCfg(Settings):
    """The optimisation of one training run."""

    optimizer: Optimizer = Field(Optimizer.ADAM, description="optimizer")
    lr: Annotated[Positive, Field(le=10)] | None = Field(
        None, description="learning rate (null: the arch's, 1e-3 cnn3 / 1e-4 vgg16 and library models)")
    batch_size: Count = Field(128, description="clean images per step (the patch augmentation adds a modified copy "
                                               "of each)")
    epochs: Count | None = Field(None, description=f"epochs (null: the arch's pretraining epochs, 10 cnn3 and "
                                                   f"library models / 200 vgg16, or {FINETUNE_EPOCHS} when "
                                                   f"fine-tuning)")
    weight_decay: Annotated[float, Field(ge=0, allow_inf_nan=False, strict=True)] = Field(
        0.0, description="L2 weight decay")
    momentum: Share = Field(0.9, description="sgd's momentum (RMSProp keeps its usual 0, as in Keras and torch)")
    plateau_patience: Annotated[int, Field(ge=0, strict=True)] = Field(
        1, description="pretraining's adaptive lr: ReduceLROnPlateau patience in epochs (0: no schedule)")
    plateau_factor: Annotated[float, Field(gt=0, lt=1, allow_inf_nan=False, strict=True)] = Field(
        0.5, description="pretraining's adaptive lr: the factor at each plateau")
    seed: StrictInt = Field(0, description="seed of the initialisation, batch order, augmentation and attack starts")

    def resolved(self, arch: str, *, finetune: bool) -> Self:
        """lr and epochs filled in: the paper's for `arch` (fine-tuning: FINETUNE_EPOCHS)."""
        paper = arch_info(arch)
        return self.replace(lr=self.lr if self.lr is not None else paper.lr,
                            epochs=self.epochs if self.epochs is not None else
                            FINETUNE_EPOCHS if finetune else paper.pretrain_epochs)

    @property
    def learning_rate(self) -> float:
        assert self.lr is not None, "resolve the training settings first (TrainCfg.resolved)"
        return self.lr

    @property
    def num_epochs(self) -> int:
        assert self.epochs is not None, "resolve the training settings first (TrainCfg.resolved)"
        return self.epochs


class PretrainCfg(TrainCfg):
    """Pretraining a base model from scratch (the paper's adaptive lr: ReduceLROnPlateau on validation loss)."""

    limit_train: Count | None = Field(None, description="pretrain on the first N training images (null: all)")
    limit_eval: Count | None = Field(None, description="validate (the lr schedule) and test on the first N images "
                                                       "of each split (null: all)")

    def train(self) -> TrainCfg:
        """The optimisation alone."""
        return TrainCfg(**{k: getattr(self, k) for k in TrainCfg.model_fields})


class MethodCfg(Settings):
    """How fine-tuning builds its training batches: the paper's patch augmentation, or adversarial examples
    (trainables/methods.py). A parameter the method does not read is refused; one it reads and is not given takes
    its default."""

    method: Method = Field(Method.PATCH, description="fine-tuning method")
    augment: Flag | None = Field(None, description="the paper's patch augmentation too: the adversary attacks clean "
                                                   "(+) patch-modified images (null: only for patch)")
    train_eps: Unit | None = Field(None, description="training budget, pixel units (null: the study objective's eps, "
                                                     "or the paper's for the data set)")
    at_steps: Count | None = Field(None, description=f"attack steps (null: {ROBUST_AT_STEPS} for pgd_at and trades, "
                                                     f"{PAPER_STEPS} for the paper's baselines)")
    at_alpha: Unit = Field(PAPER_ALPHA, description="the paper's baselines: attack step size")
    beta: Positive = Field(6.0, description="trades: weight of the KL term (Zhang et al.'s choice)")
    eps_warmup: Share = Field(0.0, description="share of the run's training steps over which eps (and alpha with it) "
                                               "grows linearly to its value (0: full eps from the first step)")

    @model_validator(mode="after")
    def _params_of_the_method(self) -> MethodCfg:
        reads = METHODS[self.method].params
        for name in sorted(self.model_fields_set - {"method", "augment"}):
            if name not in reads and getattr(self, name) is not None:
                raise ValueError(f"{name} {not_a_parameter(self.method)}; got {name} {getattr(self, name)!r}")
        if self.method is Method.PATCH and self.augment is False:
            raise ValueError("method patch is the patch augmentation itself: augment must be true")
        return self

    @property
    def adversarial(self) -> bool:
        return METHODS[self.method].attack is not None

    @property
    def augmented(self) -> bool:
        """Whether the batches include patch-modified images."""
        return self.augment if self.augment is not None else self.method is Method.PATCH

    def resolved(self, default_eps: float) -> MethodCfg:
        """Every parameter the method reads filled in (train_eps from `default_eps`), and `augment` decided."""
        reads = METHODS[self.method].params
        changes: dict[str, Any] = {"augment": self.augmented}
        if "train_eps" in reads and self.train_eps is None:
            changes["train_eps"] = default_eps
        if "at_steps" in reads and self.at_steps is None:
            changes["at_steps"] = PAPER_STEPS if METHODS[self.method].paper_baseline else ROBUST_AT_STEPS
        return self.replace(**changes)

    def attack(self) -> AttackCfg | None:
        """The attack that crafts the training examples (one random start, last iterate); None for patch.

        FGSM-RS steps 1.25 eps from a random start (Wong et al.); PGD-AT and TRADES take Madry's step size; the
        paper's baselines its alpha."""
        info = METHODS[self.method]
        if info.attack is None:
            return None
        eps = self.train_eps
        assert eps is not None, "resolve the method first (MethodCfg.resolved)"
        if self.method is Method.FGSM_RS:
            return AttackCfg(name=AttackName.PGD, eps=eps, alpha=min(1.0, 1.25 * eps), steps=1, last_iterate=True)
        if info.attack is AttackName.FGSM:
            return AttackCfg(name=AttackName.FGSM, eps=eps, alpha=eps, steps=1, last_iterate=True)
        assert self.at_steps is not None, "resolve the method first (MethodCfg.resolved)"
        alpha = self.at_alpha if info.paper_baseline else madry_alpha(eps, self.at_steps)
        return AttackCfg(name=info.attack, eps=eps, alpha=alpha, steps=self.at_steps, last_iterate=True)

    def describe(self) -> dict[str, Any]:
        """The method and the parameters it reads (checkpoint metadata, results)."""
        out: dict[str, Any] = {"method": self.method.value, "augment": self.augmented}
        out.update({k: getattr(self, k) for k in METHODS[self.method].params})
        return out
