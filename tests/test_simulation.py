"""Simulating in seeded chunks, in this process, in worker processes or on any executor."""

import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import pytest
import torch
from torch.distributions import Independent, Normal

from fmpe import FMPE
from fmpe.simulation import simulate, simulation_chunks

PRIOR = Independent(Normal(torch.zeros(3), torch.ones(3)), 1)


def noisy_square(theta: torch.Tensor) -> torch.Tensor:
    """A module-level simulator, so that worker processes can unpickle it."""
    return theta**2 + torch.randn_like(theta)


def test_results_do_not_depend_on_the_number_of_workers():
    torch.manual_seed(0)
    theta, x = simulate(noisy_square, PRIOR, 1000, batch_size=100, show_progress=False)
    torch.manual_seed(0)
    theta_2, x_2 = simulate(
        noisy_square, PRIOR, 1000, batch_size=100, num_workers=2, show_progress=False
    )
    assert torch.equal(theta, theta_2) and torch.equal(x, x_2)
    assert x.shape == (1000, 3)
    # The noise is really drawn: the residuals have unit variance and differ between chunks.
    residual = x - theta**2
    assert 0.9 < residual.var().item() < 1.1
    assert not torch.equal(residual[:100], residual[100:200])


def test_simulating_leaves_the_callers_random_state_alone():
    torch.manual_seed(1)
    simulate(noisy_square, PRIOR, 10, show_progress=False)
    after = torch.rand(1)
    torch.manual_seed(1)
    PRIOR.sample((10,))
    torch.randint(2**62, ())
    assert torch.equal(after, torch.rand(1))


def test_bad_simulator_output_and_arguments_are_named():
    with pytest.raises(ValueError, match=r"theta \(10, d\) to a tensor \(10, ...\), got \(9, 3\)"):
        simulate(lambda theta: theta[:9], PRIOR, 10, show_progress=False)
    with pytest.raises(ValueError, match="num_workers"):
        simulate(noisy_square, PRIOR, 10, num_workers=-1, show_progress=False)


def slow_noisy_square(theta: torch.Tensor) -> torch.Tensor:
    """Draws its noise in pieces and yields the interpreter between them, so that threads
    simulating at once would interleave their draws if they shared the generator."""
    pieces = []
    for row in theta.split(10):
        time.sleep(0.001)
        pieces.append(row**2 + torch.randn_like(row))
    return torch.cat(pieces)


def in_process(simulator, n: int = 600, batch_size: int = 50):
    torch.manual_seed(3)
    return simulate(simulator, PRIOR, n, batch_size=batch_size, show_progress=False)


def test_any_process_pool_executor_gives_the_in_process_result():
    theta, x = in_process(noisy_square)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(2, mp_context=context) as pool:
        torch.manual_seed(3)
        theta_2, x_2 = simulate(
            noisy_square, PRIOR, 600, batch_size=50, executor=pool, show_progress=False
        )
    assert torch.equal(theta, theta_2) and torch.equal(x, x_2)


def test_threads_take_turns_with_the_global_generators():
    # The main thread draws θ while four threads simulate; each chunk must still see its own
    # seed's stream alone.
    theta, x = in_process(slow_noisy_square)
    with ThreadPoolExecutor(4) as pool:
        torch.manual_seed(3)
        theta_2, x_2 = simulate(
            slow_noisy_square,
            PRIOR,
            600,
            batch_size=50,
            executor=pool,
            max_in_flight=3,
            show_progress=False,
        )
    assert torch.equal(theta, theta_2) and torch.equal(x, x_2)


def test_a_dask_cluster_gives_the_in_process_result():
    distributed = pytest.importorskip("distributed")
    theta, x = in_process(slow_noisy_square)
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=2, processes=False, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        estimator = FMPE(slow_noisy_square, PRIOR)
        torch.manual_seed(3)
        estimator.simulate(600, batch_size=50, executor=client.get_executor(), show_progress=False)
    assert torch.equal(theta, estimator.theta) and torch.equal(x, estimator.x)


def failing_after_first_chunk(theta: torch.Tensor) -> torch.Tensor:
    if theta.shape[0] < 50:
        raise RuntimeError("simulator broke")
    return theta


def test_a_failing_chunk_on_an_executor_raises_and_cancels_the_rest():
    submitted = []

    class Recording(ThreadPoolExecutor):
        def submit(self, fn, *args, **kwargs):
            future = super().submit(fn, *args, **kwargs)
            submitted.append(future)
            return future

    with Recording(1) as pool, pytest.raises(RuntimeError, match="simulator broke"):
        # The last chunk (20 rows) fails; every chunk before it must have been yielded.
        list(
            simulation_chunks(
                failing_after_first_chunk,
                PRIOR,
                220,
                batch_size=50,
                executor=pool,
                max_in_flight=1,
                show_progress=False,
            )
        )
    assert len(submitted) == 5 and all(f.done() for f in submitted)


def test_executor_arguments_are_checked():
    with ProcessPoolExecutor(1) as pool, pytest.raises(ValueError, match="not both"):
        simulate(noisy_square, PRIOR, 10, num_workers=2, executor=pool, show_progress=False)
    with pytest.raises(ValueError, match="concurrent.futures.Executor"):
        simulate(noisy_square, PRIOR, 10, executor=object(), show_progress=False)
    with ThreadPoolExecutor(1) as pool, pytest.raises(ValueError, match="max_in_flight"):
        simulate(noisy_square, PRIOR, 10, executor=pool, max_in_flight=0, show_progress=False)
