"""What goes into a run: the data (`DataCfg`), the model (`ModelCfg`) and the paper's patch augmentation (`AugCfg`).

Units: sizes in pixels, noise and fill values in [0, 1] pixel units.
"""

from __future__ import annotations

import os
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, StrictInt, field_validator, model_validator

from trainables.config.spine import Count, FieldError, Flag, PathText, Settings, UnitClosed
from trainables.vocab import (
    ARCH_PATTERN,
    IMAGEFOLDER_DEFAULT_SIZE,
    IMAGENETTE_DEFAULT_SIZE,
    ConfigError,
    Dataset,
    DatasetInfo,
    PatchOp,
    check_arch_name,
    dataset_info,
    patches_need_jitter,
)

# An architecture: one of the paper's, or any classification model of torchvision or timm as LIBRARY/NAME.
ArchName = Annotated[str, BeforeValidator(check_arch_name), Field(json_schema_extra={"pattern": ARCH_PATTERN})]


class DataCfg(Settings):
    """Which images, where they are, and how they are split and limited. The test split is only for final
    reports; hyperparameters are chosen on the validation split, held out from the training split."""

    dataset: Dataset = Field(Dataset.FMNIST, description="data set")
    root: PathText | None = Field(None, description="directory searched first for the data set's files (null: only the "
                                               "standard places, then torchvision's download); imagefolder: the "
                                               "tree's top, holding train/ (and optionally val/, test/)")
    val_fraction: Annotated[float, Field(gt=0, le=0.9, allow_inf_nan=False, strict=True)] = Field(
        0.1, description="share of the training split held out for validation")
    split_seed: StrictInt = Field(0, description="seeds the train/val split and the test subset's order (the same "
                                                 "for every trial and run)")
    limit_train: Count | None = Field(None, description="use only the first N training images (null: all)")
    limit_val: Count | None = Field(None, description="use only the first N validation images; a study scores its "
                                                      "objective on them every epoch (null: all)")
    limit_test: Count | None = Field(None, description="use only the first N test images (null: all)")
    image_size: Annotated[int, Field(ge=32, le=512, strict=True)] | None = Field(
        None, description=f"imagenette and imagefolder: image side in pixels after resizing the shorter side and a "
                          f"centre crop (null: {IMAGENETTE_DEFAULT_SIZE} imagenette, {IMAGEFOLDER_DEFAULT_SIZE} "
                          f"imagefolder)")
    download: Flag = Field(True, description="fall back to torchvision's download when no local copy is found")

    @model_validator(mode="after")
    def _consistent(self) -> DataCfg:
        if self.image_size is not None and not dataset_info(self.dataset).resizable:
            raise FieldError("image_size", f"is only settable for imagenette and imagefolder, got dataset "
                                           f"{self.dataset.value}")
        if self.dataset is Dataset.IMAGEFOLDER and self.root is None:
            raise FieldError("root", "imagefolder needs the tree's directory (--data-root DIR), got none")
        return self

    def resolved(self) -> DataCfg:
        """The image side filled in where it applies (the data set's default)."""
        if self.image_size is None and dataset_info(self.dataset).resizable:
            return self.replace(image_size=dataset_info(self.dataset).height)
        return self

    @property
    def info(self) -> DatasetInfo:
        """Shape, classes and normalisation of the images these settings load."""
        return dataset_info(self.dataset, self.image_size)

    def split_meta(self) -> dict[str, Any]:
        """What defines the splits (the limits are per-command choices): a checkpoint records it, so evaluating the
        checkpoint later uses the same validation split."""
        meta: dict[str, Any] = {"val_fraction": self.val_fraction, "split_seed": self.split_seed, "image_size": self.resolved().image_size}
        if self.dataset is Dataset.IMAGEFOLDER and self.root is not None:  # the tree is the data set
            meta["root"] = os.path.abspath(os.path.expanduser(self.root))
        return meta


class ModelCfg(Settings):
    """Which network is trained."""

    arch: ArchName | None = Field(None, description="architecture: cnn3, vgg16, torchvision/NAME or timm/NAME "
                                                    "(null: the data set's, cnn3 fmnist, vgg16 cifar10 and "
                                                    "imagenette, torchvision/resnet18 imagefolder)")

    def resolved(self, dataset: Dataset) -> ModelCfg:
        return self if self.arch is not None else self.replace(arch=dataset_info(dataset).default_arch)


class AugCfg(Settings):
    """The paper's patch augmentation: each image gets one op drawn uniformly from `pool`, applied inside w x w
    patches around the image centre; fine-tuning trains on clean (+) modified images."""

    pool: tuple[PatchOp, ...] = Field(tuple(PatchOp), description="ops drawn from, one per image")
    patch_size: Count | None = Field(None, description="patch side w in pixels (null: about 0.3 x the image side, "
                                                       "8 px on F-MNIST)")
    num_patches: Count = Field(1, description="patches per image")
    jitter: Annotated[int, Field(ge=0, strict=True)] = Field(
        0, description="largest offset of each patch from the exact centre, in pixels (0: the central patch)")
    prob: UnitClosed = Field(1.0, description="chance that an image is modified at all (1: the paper)")
    rotate_degrees: Annotated[float, Field(ge=0, le=180, allow_inf_nan=False, strict=True)] = Field(
        30.0, description="rotation angle drawn from U(-d, d), degrees")
    translate_fraction: UnitClosed = Field(0.25, description="shift drawn from U(-f, f) x the patch side, per axis")
    noise_std: UnitClosed = Field(0.1, description="Gaussian noise std, pixel units")
    occlude_value: UnitClosed = Field(0.0, description="value written into occluded patches, pixel units")

    @field_validator("pool", mode="before")
    @classmethod
    def _pool(cls, value: Any) -> Any:
        if isinstance(value, str):  # "rotate,flip" (a trial's config, a CLI list)
            value = [p.strip() for p in value.split(",") if p.strip()]
        if isinstance(value, (list, tuple)):
            if not value:
                raise ValueError(f"must name at least one op ({', '.join(p.value for p in PatchOp)}); got an empty pool")
            names = [p.value if isinstance(p, PatchOp) else p for p in value]
            if len(set(names)) != len(names):
                raise ValueError(f"lists an op twice: {','.join(map(str, names))}")
        return value

    @model_validator(mode="after")
    def _patches_need_jitter(self) -> AugCfg:
        if patches_need_jitter(self.num_patches, self.jitter):
            raise ValueError(f"num_patches {self.num_patches} needs jitter > 0 (without it every patch sits on the "
                             "centre), got jitter 0")
        return self

    @property
    def pool_text(self) -> str:
        return ",".join(op.value for op in self.pool)

    def resolved(self, info: DatasetInfo) -> AugCfg:
        """`patch_size` filled in for `info`'s images, and refused when larger than them."""
        cfg = self if self.patch_size is not None else self.replace(patch_size=info.default_patch_size)
        assert cfg.patch_size is not None
        if cfg.patch_size > info.side:
            raise ConfigError(f"patch_size {cfg.patch_size} is larger than the {info.height}x{info.width} "
                              f"{info.name.value} images")
        return cfg

    @property
    def size(self) -> int:
        """The patch side, once resolved."""
        assert self.patch_size is not None, "resolve the augmentation for its images first (AugCfg.resolved)"
        return self.patch_size
