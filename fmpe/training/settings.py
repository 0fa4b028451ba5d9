"""The settings of one training run, in one place, with the checks of their values."""

from dataclasses import dataclass, fields
from typing import Any, Literal

Schedule = Literal["cosine", "plateau", "constant"]


@dataclass(frozen=True)
class TrainingSettings:
    """How a network is trained; every estimator's `train(**settings)` takes these fields.

    Attributes:
        batch_size: training pairs per optimizer step.
        learning_rate: the peak learning rate.
        weight_decay: decoupled weight decay (AdamW) or L2 penalty (Adam).
        max_epochs: the length of training; the cosine schedule anneals over exactly these
            epochs (the Trainer gets the same number: pass it here, not in trainer_kwargs).
        schedule: "cosine" anneals the learning rate to 1% over `max_epochs`, "plateau"
            divides it by 5 when the validation loss stalls, "constant" keeps it.
        optimizer: a name in `fmpe.training.optimization.OPTIMIZERS` ("adamw", "adam") or a
            factory ``optimizer(param_groups, lr=..., weight_decay=...) -> torch.optim.Optimizer``.
        early_stopping_patience: stop once the validation loss has not improved for this
            many epochs (None: never).
        validation_fraction: the share of simulations held out to validate.
        gradient_clip: the largest gradient norm (None: no clipping).
        ema_decay: the network validated and returned is an exponential moving average of
            the trained weights with this decay per step (None: the raw weights).
        seed: seeds the split, the initialization and the training noise.
    """

    batch_size: int = 512
    learning_rate: float = 2e-3
    weight_decay: float = 0.0
    max_epochs: int = 200
    schedule: Schedule = "cosine"
    optimizer: Any = "adamw"
    early_stopping_patience: int | None = None
    validation_fraction: float = 0.05
    gradient_clip: float | None = 1.0
    ema_decay: float | None = 0.999
    seed: int = 0

    def __post_init__(self):
        _positive_int(self.batch_size, "batch_size")
        _positive_int(self.max_epochs, "max_epochs")
        if self.early_stopping_patience is not None:
            _positive_int(self.early_stopping_patience, "early_stopping_patience")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ValueError(f"seed must be an int, got {self.seed!r}")
        _positive_number(self.learning_rate, "learning_rate")
        if not _is_number(self.weight_decay) or self.weight_decay < 0:
            raise ValueError(f"weight_decay must be a number >= 0, got {self.weight_decay!r}")
        if self.gradient_clip is not None:
            _positive_number(self.gradient_clip, "gradient_clip")
        if self.ema_decay is not None and not (
            _is_number(self.ema_decay) and 0 < self.ema_decay < 1
        ):
            raise ValueError(f"ema_decay must be in (0, 1), got {self.ema_decay}")
        if not (_is_number(self.validation_fraction) and 0 < self.validation_fraction < 1):
            raise ValueError(
                f"validation_fraction must be in (0, 1), got {self.validation_fraction!r}"
            )
        if self.schedule not in ("cosine", "plateau", "constant"):
            raise ValueError(
                f"schedule must be 'cosine', 'plateau' or 'constant', got {self.schedule!r}"
            )

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def updated(self, overrides: dict[str, Any]) -> "TrainingSettings":
        """These settings with `overrides`; an unknown name is an error naming the valid ones."""
        unknown = sorted(set(overrides) - set(self.names()))
        if unknown:
            raise ValueError(
                f"unknown training setting {', '.join(map(repr, unknown))}; valid settings: "
                f"{', '.join(self.names())}"
            )
        return type(self)(**{**self.__dict__, **overrides})


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _positive_int(value: Any, name: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _positive_number(value: Any, name: str) -> None:
    if not _is_number(value) or not value > 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")
