"""Running a simulator over parameters drawn from the prior, in seeded chunks, with progress.

Each chunk of parameters is drawn, and simulated under its own seed, from torch's global
generator, so the simulations are the same whether the chunks run in this process or in worker
processes, and whatever the number of workers.
"""

import multiprocessing
import random
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch
from torch import Tensor
from torch.distributions import Distribution
from tqdm.auto import tqdm

from fmpe.checks import as_count

Simulator = Callable[[Tensor], Tensor]


def simulate_chunk(simulator: Simulator, theta: Tensor, seed: int) -> Tensor:
    """Runs the simulator on theta (b, d) with torch, numpy and random seeded by `seed`.

    The global generators are restored afterwards, so the caller's random state is untouched.

    Returns:
        x: (b, *x_shape)
    """
    numpy_state, python_state = np.random.get_state(), random.getstate()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        random.seed(seed)
        try:
            x = simulator(theta)
        finally:
            np.random.set_state(numpy_state)
            random.setstate(python_state)
    if not isinstance(x, Tensor) or x.shape[0] != theta.shape[0]:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(
            f"the simulator must map theta ({theta.shape[0]}, d) to a tensor "
            f"({theta.shape[0]}, ...), got {shape}"
        )
    return x


def _worker_init() -> None:
    # Workers share the machine's cores; several intra-op threads each would oversubscribe them.
    torch.set_num_threads(1)


def simulation_chunks(
    simulator: Simulator,
    prior: Distribution,
    num_simulations: int,
    *,
    batch_size: int = 1000,
    num_workers: int = 0,
    show_progress: bool = True,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Yields (theta (b, d), x (b, *x_shape)) chunks of simulations from the prior, in order.

    θ and a seed are drawn for each chunk in this process, so memory holds only the chunks in
    flight, and the result does not depend on `num_workers`.

    Args:
        num_workers: worker processes that run chunks in parallel (0: this process). The
            simulator must then be picklable: a module-level function or an object of an
            importable class, not a lambda.
    """
    num_simulations = as_count(num_simulations, "num_simulations", minimum=1)
    batch_size = as_count(batch_size, "batch_size", minimum=1)
    num_workers = as_count(num_workers, "num_workers")
    starts = range(0, num_simulations, batch_size)
    sizes = [min(batch_size, num_simulations - start) for start in starts]

    def draws() -> Iterator[tuple[Tensor, int]]:
        for size in sizes:
            yield prior.sample((size,)), int(torch.randint(2**62, ()))

    def results() -> Iterator[tuple[Tensor, Tensor]]:
        if num_workers == 0:
            for theta, seed in draws():
                yield theta, simulate_chunk(simulator, theta, seed)
            return
        # "spawn" starts clean interpreters: forking a process that already runs torch's
        # thread pools can deadlock. The simulator is therefore pickled.
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(num_workers, mp_context=context, initializer=_worker_init) as pool:
            in_flight: deque = deque()
            for theta, seed in draws():
                in_flight.append((theta, pool.submit(simulate_chunk, simulator, theta, seed)))
                # A few chunks queued per worker, not all of them: memory stays bounded.
                if len(in_flight) > 2 * num_workers:
                    done, future = in_flight.popleft()
                    yield done, future.result()
            for done, future in in_flight:
                yield done, future.result()

    with tqdm(total=num_simulations, desc="simulating", disable=not show_progress) as bar:
        for theta, x in results():
            yield theta, x
            bar.update(len(theta))


def simulate(
    simulator: Simulator,
    prior: Distribution,
    num_simulations: int,
    *,
    batch_size: int = 1000,
    num_workers: int = 0,
    show_progress: bool = True,
) -> tuple[Tensor, Tensor]:
    """Draws θ from the prior and runs the simulator on chunks of `batch_size` of them; see
    `simulation_chunks`.

    Returns:
        theta: (n, d), x: (n, *x_shape)
    """
    chunks = list(
        simulation_chunks(
            simulator,
            prior,
            num_simulations,
            batch_size=batch_size,
            num_workers=num_workers,
            show_progress=show_progress,
        )
    )
    return torch.cat([theta for theta, _ in chunks]), torch.cat([x for _, x in chunks])
