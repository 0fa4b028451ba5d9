"""Optimizers by name, parameter groups and learning-rate schedules.

>>> OPTIMIZERS.register("sgd", lambda groups, lr, weight_decay: torch.optim.SGD(groups, lr, 0.9))
>>> FMPE(simulator, prior).train(10_000, optimizer="sgd")
"""

from collections.abc import Callable

import torch
from torch import nn

from fmpe.registry import Registry
from fmpe.training.settings import TrainingSettings

OptimizerFactory = Callable[..., torch.optim.Optimizer]
"""factory(param_groups: list[dict], lr: float, weight_decay: float) -> Optimizer."""


def _fused(groups: list[dict]) -> bool:
    # One kernel updates every parameter, instead of a Python loop over them.
    return all(p.device.type in ("cpu", "cuda") for g in groups for p in g["params"])


def adamw(groups: list[dict], lr: float, weight_decay: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, fused=_fused(groups))


def adam(groups: list[dict], lr: float, weight_decay: float) -> torch.optim.Optimizer:
    return torch.optim.Adam(groups, lr=lr, weight_decay=weight_decay, fused=_fused(groups))


OPTIMIZERS: Registry[OptimizerFactory] = Registry(
    "optimizer", "fmpe.training.optimization.OPTIMIZERS"
)
OPTIMIZERS.register("adamw", adamw)
OPTIMIZERS.register("adam", adam)


def parameter_groups(network: nn.Module) -> list[dict]:
    """The network's own groups if it defines ``parameter_groups() -> list[dict]`` (each with
    "params" and, optionally, its own "lr" or "weight_decay"), else one group of all
    trainable parameters."""
    if hasattr(network, "parameter_groups"):
        return list(network.parameter_groups())
    return [{"params": [p for p in network.parameters() if p.requires_grad]}]


def optimizer_factory(optimizer: str | OptimizerFactory) -> OptimizerFactory:
    """The factory registered as `optimizer`, or `optimizer` itself if it is a factory."""
    return optimizer if callable(optimizer) else OPTIMIZERS.get(optimizer)


def configure_optimization(network: nn.Module, settings: TrainingSettings, max_epochs: int):
    """The optimizer and schedule of `settings` for `network`, as Lightning's
    `configure_optimizers` returns them; the cosine schedule spans `max_epochs`."""
    optimizer = optimizer_factory(settings.optimizer)(
        parameter_groups(network), lr=settings.learning_rate, weight_decay=settings.weight_decay
    )
    if settings.schedule == "constant":
        return optimizer
    if settings.schedule == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=max_epochs, eta_min=0.01 * settings.learning_rate
        )
        return {"optimizer": optimizer, "lr_scheduler": scheduler}
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.2, patience=5)
    return {
        "optimizer": optimizer,
        "lr_scheduler": {"scheduler": scheduler, "monitor": "val_loss"},
    }
