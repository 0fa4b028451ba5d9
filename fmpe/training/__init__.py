"""Training: the settings, the LightningModules (the maths), the data modules, the callbacks
and the fit with a Lightning Trainer."""

from fmpe.posteriors.record import TrainingRecord
from fmpe.training.fit import fit
from fmpe.training.modules import EstimatorModule, FlowMatchingModule, NPEModule
from fmpe.training.settings import TrainingSettings

__all__ = [
    "EstimatorModule",
    "FlowMatchingModule",
    "NPEModule",
    "TrainingRecord",
    "TrainingSettings",
    "fit",
]
