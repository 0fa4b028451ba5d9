"""Running a simulator over parameters drawn from the prior, in batches, with progress."""

from collections.abc import Callable

import torch
from torch import Tensor
from torch.distributions import Distribution
from tqdm.auto import tqdm

Simulator = Callable[[Tensor], Tensor]


def simulate(
    simulator: Simulator,
    prior: Distribution,
    num_simulations: int,
    *,
    batch_size: int = 1000,
    show_progress: bool = True,
) -> tuple[Tensor, Tensor]:
    """Draws θ from the prior and runs the simulator on batches of them.

    Returns:
        theta: (n, d), x: (n, *x_shape)
    """
    if num_simulations < 1:
        raise ValueError(f"num_simulations must be positive, got {num_simulations}")
    theta = prior.sample((num_simulations,))
    xs = []
    with tqdm(total=num_simulations, desc="simulating", disable=not show_progress) as bar:
        for start in range(0, num_simulations, batch_size):
            batch = theta[start : start + batch_size]
            x = simulator(batch)
            if not isinstance(x, Tensor) or x.shape[0] != batch.shape[0]:
                shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
                raise ValueError(
                    f"the simulator must map theta ({batch.shape[0]}, d) to a tensor "
                    f"({batch.shape[0]}, ...), got {shape}"
                )
            xs.append(x)
            bar.update(len(batch))
    return theta, torch.cat(xs)
