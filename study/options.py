"""The commands' own options: how a command runs and what it writes, beside the settings of what it computes
(`trainables.config`, `study.settings`). Declared here once, like every setting, so each flag is a view of a field."""

from __future__ import annotations

import warnings
from typing import Annotated

from pydantic import Field, StrictInt

from trainables.config.spine import Count, Flag, PathText, Settings
from trainables.vocab import AttackName, EvalSplit

with warnings.catch_warnings():  # `json` shadows pydantic's deprecated BaseModel.json(), which nothing here calls
    warnings.filterwarnings("ignore", message='Field name "json"', category=UserWarning)

    class Output(Settings):
        """Where a command computes and how it talks."""

        device: str = Field("auto", description="auto (CUDA when available), cpu, cuda, cuda:N")
        quiet: Flag = Field(False, description="no progress bars")
        json: Flag = Field(False, description="print one JSON object instead of tables")  # type: ignore[assignment]


class PretrainOptions(Settings):
    out: str | None = Field(None, description="checkpoint path (null: runs/pretrain-DATASET-ARCH-sSEED.pt)")


class FinetuneOptions(Settings):
    base: PathText = Field(description="the base checkpoint (`patchtune pretrain`)")
    from_scratch: Flag = Field(False, description="train a fresh initialisation (from the seed) of the base's "
                                                  "architecture, not its weights, as from-scratch robust-training "
                                                  "recipes do (raise the epochs); the base stays the comparison")
    out: str | None = Field(None, description="checkpoint path (null: runs/finetune-METHOD-OPTIMIZER-sSEED.pt)")


class EvalOptions(Settings):
    """`patchtune eval`: which attacks, on which images."""

    attacks: Annotated[tuple[AttackName, ...], Field(min_length=1)] = Field(tuple(AttackName),
                                                                              description="attacks scored")
    split: EvalSplit = Field(EvalSplit.TEST, description="split evaluated")
    limit: Count | None = Field(None, description="evaluate only the first N images of the split (null: all)")
    batch_size: Count | None = Field(None, description="images per attack batch (null: 500 on CPU; on GPU up to "
                                                       "10000, by image size)")
    seed: StrictInt = Field(0, description="seed of the PGD random starts")


class AuditOptions(Settings):
    base: PathText | None = Field(None, description="undefended base checkpoint: enables the transfer check")
    out: str | None = Field(None, description="also write the report as JSON to this file")


class RunOptions(Settings):
    dry_run: Flag = Field(False, description="validate spec, data, base checkpoint and storage; print the resolved "
                                             "spec; start nothing")


class ShowAugmentOptions(Settings):
    n: Count = Field(8, description="example images per row")
    seed: StrictInt = Field(0, description="seed of the patch draws")
    out: str = Field("augment.png", description="PNG path")


class SchemaOptions(Settings):
    out: str | None = Field(None, description="write the schema to this file (null: print it)")
