"""Running a simulator over parameters drawn from the prior, in seeded chunks, with progress.

Each chunk's parameters and seed are drawn in this process from torch's global generator, and
the chunk is simulated under its seed, so the simulations are the same whether the chunks run
here, in worker processes or on any `concurrent.futures.Executor` (a dask cluster, SLURM jobs
through submitit, MPI ranks), and whatever the number of workers.
"""

import contextlib
import multiprocessing
import random
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor

import numpy as np
import torch
from torch import Tensor
from torch.distributions import Distribution
from tqdm.auto import tqdm

from fmpe.checks import as_count

Simulator = Callable[[Tensor], Tensor]

# Chunks submitted ahead of the one being yielded, on an executor that fmpe does not own and
# whose number of workers it therefore does not know.
EXECUTOR_CHUNKS_IN_FLIGHT = 64

# The global generators belong to the process, not the thread: a thread-based executor (a
# ThreadPoolExecutor, dask workers with processes=False) seeding them for one chunk while
# another thread simulates or draws θ would mix their random streams. Every seeded section
# therefore holds this lock, so threads of one process take turns.
_GLOBAL_RANDOM_STATE = threading.RLock()


def simulate_chunk(simulator: Simulator, theta: Tensor, seed: int) -> Tensor:
    """Runs the simulator on theta (b, d) with torch, numpy and random seeded by `seed`.

    The global generators are restored afterwards, so the caller's random state is untouched.

    Returns:
        x: (b, *x_shape)
    """
    with _GLOBAL_RANDOM_STATE:
        x = _seeded_call(simulator, theta, seed)
    if not isinstance(x, Tensor) or x.shape[0] != theta.shape[0]:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(
            f"the simulator must map theta ({theta.shape[0]}, d) to a tensor "
            f"({theta.shape[0]}, ...), got {shape}"
        )
    return x


def _seeded_call(simulator: Simulator, theta: Tensor, seed: int):
    numpy_state, python_state = np.random.get_state(), random.getstate()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        random.seed(seed)
        try:
            return simulator(theta)
        finally:
            np.random.set_state(numpy_state)
            random.setstate(python_state)


def single_threaded_worker() -> None:
    # Workers share the machine's cores; several intra-op threads each would oversubscribe them.
    torch.set_num_threads(1)


def simulation_chunks(
    simulator: Simulator,
    prior: Distribution,
    num_simulations: int,
    *,
    batch_size: int = 1000,
    num_workers: int = 0,
    executor: Executor | None = None,
    max_in_flight: int | None = None,
    show_progress: bool = True,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Yields (theta (b, d), x (b, *x_shape)) chunks of simulations from the prior, in order.

    θ and a seed are drawn for each chunk in this process, so memory holds only the chunks in
    flight, and the result depends neither on `num_workers` nor on the executor.

    Args:
        num_workers: worker processes that run chunks in parallel (0: this process). The
            simulator must then be picklable: a module-level function or an object of an
            importable class, not a lambda.
        executor: any `concurrent.futures.Executor` to run the chunks on instead, e.g.
            ``dask.distributed.Client.get_executor()``, submitit's `AutoExecutor` (SLURM),
            mpi4py's `MPIPoolExecutor`, Ray's; it is used, not shut down. Threads of one
            process take turns (the global generators are per process).
        max_in_flight: chunks submitted ahead of the one being yielded (None: twice
            `num_workers`, or `EXECUTOR_CHUNKS_IN_FLIGHT` on an executor). More keeps a
            large cluster busy; fewer holds fewer chunks in memory.
    """
    num_simulations = as_count(num_simulations, "num_simulations", minimum=1)
    batch_size = as_count(batch_size, "batch_size", minimum=1)
    num_workers = as_count(num_workers, "num_workers")
    if executor is not None and num_workers > 0:
        raise ValueError(
            "pass either num_workers (fmpe's own process pool) or an executor, not both"
        )
    if executor is not None and not callable(getattr(executor, "submit", None)):
        raise ValueError(
            "executor must be a concurrent.futures.Executor (with submit(fn, *args)), got "
            f"{type(executor).__name__}"
        )
    if max_in_flight is None:
        max_in_flight = 2 * num_workers if executor is None else EXECUTOR_CHUNKS_IN_FLIGHT
    else:
        max_in_flight = as_count(max_in_flight, "max_in_flight", minimum=1)
    starts = range(0, num_simulations, batch_size)
    sizes = [min(batch_size, num_simulations - start) for start in starts]

    def draws() -> Iterator[tuple[Tensor, int]]:
        for size in sizes:
            with _GLOBAL_RANDOM_STATE:
                draw = prior.sample((size,)), int(torch.randint(2**62, ()))
            yield draw

    def results() -> Iterator[tuple[Tensor, Tensor]]:
        if executor is not None:
            yield from _in_order(executor, simulator, draws(), max_in_flight)
        elif num_workers == 0:
            for theta, seed in draws():
                yield theta, simulate_chunk(simulator, theta, seed)
        else:
            # "spawn" starts clean interpreters: forking a process that already runs torch's
            # thread pools can deadlock. The simulator is therefore pickled.
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(
                num_workers, mp_context=context, initializer=single_threaded_worker
            ) as pool:
                yield from _in_order(pool, simulator, draws(), max_in_flight)

    with tqdm(total=num_simulations, desc="simulating", disable=not show_progress) as bar:
        for theta, x in results():
            yield theta, x
            bar.update(len(theta))


def _in_order(
    executor: Executor,
    simulator: Simulator,
    draws: Iterator[tuple[Tensor, int]],
    max_in_flight: int,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Runs `simulate_chunk` on `executor` for every (θ, seed) of `draws`, with at most
    `max_in_flight` chunks submitted ahead, and yields (θ, x) in the order drawn. Chunks still
    queued when the caller stops (or a chunk fails) are cancelled."""
    in_flight: deque[tuple[Tensor, Future]] = deque()
    try:
        for theta, seed in draws:
            in_flight.append((theta, executor.submit(simulate_chunk, simulator, theta, seed)))
            if len(in_flight) > max_in_flight:
                done, future = in_flight.popleft()
                yield done, future.result()
        while in_flight:
            done, future = in_flight.popleft()
            yield done, future.result()
    finally:
        for _, future in in_flight:
            # Best effort: a chunk that finished meanwhile may refuse (submitit's scancel of
            # a completed job fails), and that must not hide the error being raised.
            with contextlib.suppress(Exception):
                future.cancel()


def simulate(
    simulator: Simulator,
    prior: Distribution,
    num_simulations: int,
    *,
    batch_size: int = 1000,
    num_workers: int = 0,
    executor: Executor | None = None,
    max_in_flight: int | None = None,
    show_progress: bool = True,
) -> tuple[Tensor, Tensor]:
    """Draws θ from the prior and runs the simulator on chunks of `batch_size` of them, in
    this process, in `num_workers` processes or on an `executor`; see `simulation_chunks`.

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
            executor=executor,
            max_in_flight=max_in_flight,
            show_progress=show_progress,
        )
    )
    return torch.cat([theta for theta, _ in chunks]), torch.cat([x for _, x in chunks])
