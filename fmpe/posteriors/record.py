"""What a training run did, kept with the posterior it trained and in its file."""

from dataclasses import dataclass


@dataclass(frozen=True)
class TrainingRecord:
    """What a training run did.

    Attributes:
        seconds: wall seconds inside the Trainer, summed over every process that worked on
            the run (a resumed run adds the time before its interruption, up to its last
            checkpoint).
        epochs: epochs trained.
        best_validation_loss: the validation loss of the returned weights.
        trainable_parameters: parameters the optimizer trained (POET: its rotations and the
            biases, not the fixed weights); None in files that did not record it.
    """

    seconds: float
    epochs: int
    best_validation_loss: float
    trainable_parameters: int | None = None
