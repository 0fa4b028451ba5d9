"""Fitting a module with a Lightning Trainer: fmpe's callbacks, checkpoints and resumption."""

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

from fmpe.posteriors.record import TrainingRecord
from fmpe.training.callbacks import (
    BestWeights,
    ExponentialMovingAverage,
    GlobalRandomState,
    TrainingTime,
)
from fmpe.training.modules import EstimatorModule
from fmpe.training.settings import TrainingSettings

CHECKPOINT = "last.ckpt"


def fit(
    module: EstimatorModule,
    data: L.LightningDataModule,
    settings: TrainingSettings,
    *,
    checkpoint_dir: Path | None = None,
    trainer_kwargs: dict | None = None,
    show_progress: bool = True,
) -> tuple[torch.device, TrainingRecord]:
    """Fits the module, restores its best weights and puts it in eval mode.

    With a `checkpoint_dir`, Lightning saves `last.ckpt` there after every epoch, and a call
    that finds one resumes from it; with the shuffling's and the global random state in the
    checkpoint, it goes on bit for bit as the uninterrupted run would on the same machine.
    The network may ask for callbacks of its own (``training_callbacks() -> list``) and opt
    out of weight averaging (``weight_averaging = False``).

    Returns:
        the device it trained on, and what the run did.
    """
    trainer_kwargs = dict(trainer_kwargs or {})
    if "max_epochs" in trainer_kwargs:
        raise ValueError(
            "pass max_epochs to train(...), not in trainer_kwargs: the schedule and the "
            "Trainer take it from the same setting"
        )
    network = module.network
    averaging = settings.ema_decay is not None and getattr(network, "weight_averaging", True)
    average = ExponentialMovingAverage(settings.ema_decay) if averaging else None
    best = BestWeights("val_loss", average)
    timer = TrainingTime()
    callbacks: list = [best, timer, GlobalRandomState()]
    if settings.early_stopping_patience is not None:
        callbacks.append(
            EarlyStopping(monitor="val_loss", patience=settings.early_stopping_patience)
        )
    callbacks += [average] if average is not None else []
    callbacks += list(getattr(network, "training_callbacks", list)())
    if checkpoint_dir is not None:
        # Without a monitor, the one checkpoint kept is the latest: last.ckpt.
        callbacks.append(
            ModelCheckpoint(dirpath=checkpoint_dir, filename="last", enable_version_counter=False)
        )
    callbacks += trainer_kwargs.pop("callbacks", None) or []
    options = dict(
        max_epochs=settings.max_epochs,
        callbacks=callbacks,
        gradient_clip_val=settings.gradient_clip,
        logger=False,
        enable_checkpointing=checkpoint_dir is not None,
        enable_model_summary=False,
        enable_progress_bar=show_progress,
        num_sanity_val_steps=0,
        deterministic=False,
    )
    options.update(trainer_kwargs)
    resume_from = checkpoint_dir / CHECKPOINT if checkpoint_dir is not None else None
    with quiet_lightning(show_progress):
        trainer = L.Trainer(**options)
        trainer.fit(
            module,
            datamodule=data,
            ckpt_path=resume_from if resume_from and resume_from.exists() else None,
        )
    if best.best_state is not None:
        module.load_state_dict(best.best_state)
    module.eval()
    trainable = sum(p.numel() for p in network.parameters() if p.requires_grad)
    record = TrainingRecord(timer.seconds, trainer.current_epoch, best.best_score, trainable)
    return trainer.strategy.root_device, record


@contextmanager
def quiet_lightning(show_progress: bool) -> Iterator[None]:
    """Silences Lightning's start-up banner (GPU available, ...) when no progress is shown;
    its advice about data loader workers, which does not apply to in-memory tensors; its
    warning that the checkpoint folder is not empty, which is how training resumes; and a
    deprecation inside Lightning itself, which no user of fmpe can act on."""
    logger = logging.getLogger("lightning.pytorch")
    level = logger.level
    if not show_progress:
        logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            warnings.filterwarnings("ignore", message=".*number of training batches.*")
            warnings.filterwarnings("ignore", message="Checkpoint directory .* is not empty")
            warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
            yield
    finally:
        logger.setLevel(level)
