"""The benchmark: train an estimator per task and budget, score it on the task's observations.

Every finished (task, budget, estimator, observation, seed) is added to the results at once,
and every trained posterior is saved, so a run that is stopped and started again skips what
is done. Two runs may share a results file and a runs folder: a posterior being trained by
one is waited for by the other, never trained twice at once.
"""

import multiprocessing
import warnings
from collections.abc import Iterable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor, as_completed
from contextlib import nullcontext
from pathlib import Path

from tqdm.auto import tqdm

from fmpe.benchmark.cards import CardStore
from fmpe.benchmark.deadline import Deadline, median_gap_seconds
from fmpe.benchmark.evaluation import NUM_SAMPLES, evaluate, evaluate_saved
from fmpe.benchmark.experiment import ROUNDS_MARK, Run, method_label
from fmpe.benchmark.measure import provenance, resolve_device
from fmpe.benchmark.results import ResultsStore, row_key
from fmpe.estimators import get_estimator
from fmpe.posteriors import Posterior
from fmpe.simulation import single_threaded_worker
from fmpe.tasks import Task, get_task


def scoring_pool(workers: int) -> Executor | nullcontext:
    """`workers` single-threaded scoring processes, or none (score here) for one worker."""
    if workers < 2:
        return nullcontext()
    # "spawn": forking a process that already runs torch's thread pools can deadlock.
    context = multiprocessing.get_context("spawn")
    return ProcessPoolExecutor(workers, mp_context=context, initializer=single_threaded_worker)


def _scores(
    pool: Executor | None,
    posterior: Posterior,
    saved: Path,
    task: Task,
    observations: list[int],
    seed: int,
    num_samples: int,
) -> Iterator[tuple[int, dict]]:
    """(observation, `evaluate`'s scores) for every observation, as each is done: in `pool`'s
    workers from the saved posterior, or here, one after the other, without a pool."""
    if pool is None:
        for observation in observations:
            yield observation, evaluate(posterior, task, observation, seed, num_samples)
        return
    device = str(posterior.device)
    futures = {
        pool.submit(evaluate_saved, saved, task.name, device, o, seed, num_samples): o
        for o in observations
    }
    for future in as_completed(futures):
        yield futures[future], future.result()


def _estimator_of(label: str) -> str:
    """The estimator of a results label: "fmpe" for "fmpe@defaults+poet"."""
    return label.split("@")[0].split("+")[0]


def _is_sequential(label: str) -> bool:
    """Whether a results label trains one posterior per observation: "fmpe@rounds2"."""
    return ROUNDS_MARK in label


def expected_unit_seconds(
    rows: list[dict],
    task: str,
    budget: int,
    label: str,
    observations: int,
    trained: bool,
    workers: int = 1,
) -> float | None:
    """Seconds that training a posterior (unless it is `trained` already) and scoring it on
    `observations` are expected to take, from the finished rows of the same budget: this
    task's and label's where there are any; else the slowest of this task's rows of the same
    estimator under another label (fmpe's for fmpe@defaults; an amortized label leaves out
    sequential rounds' rows, whose gaps each hold a training) and this label's rows on the
    other tasks, since a label may train another network than the task's card (the base
    card's for fmpe@defaults); else this task's; else the slowest task's at that budget; None
    without rows at that budget.

    A row records its training seconds; an observation's scoring is the median gap between
    the finish times of a posterior's consecutive rows, or of rows `workers` apart divided by
    `workers` (`median_gap_seconds`), since parallel scoring finishes rows in bunches. Where
    this task and label have a posterior with several rows, the one scored last alone counts:
    it ran with today's code, scoring workers and machine, and earlier ones of the same cell
    can be several times slower.
    """
    at_budget = [r for r in rows if int(r["budget"]) == budget]
    same = [r for r in at_budget if r["task"] == task]
    kin = [
        r
        for r in same
        if _estimator_of(r["estimator"]) == _estimator_of(label)
        and (_is_sequential(label) or not _is_sequential(r["estimator"]))
    ]
    elsewhere = [r for r in at_budget if r["estimator"] == label]
    own = [r for r in same if r["estimator"] == label]
    scored = [group for group in _by_posterior(own) if len(group) > 1]
    if scored:
        mine = max(scored, key=lambda group: max(r.get("finished_at") or "" for r in group))
    else:
        mine = own or kin + elsewhere or same or at_budget
    if not mine:
        return None
    gaps = [
        median_gap_seconds((r.get("finished_at") for r in group), workers)
        for group in _by_posterior(mine)
    ]
    scoring = max((g for g in gaps if g is not None), default=0.0)
    training = 0.0 if trained else max(float(r.get("train_seconds") or 0) for r in mine)
    return training + observations * scoring


def _by_posterior(rows: Iterable[dict]) -> list[list[dict]]:
    """`rows` grouped by the posterior that gave them: (task, estimator label, seed)."""
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["task"], r["estimator"], r["seed"]), []).append(r)
    return list(groups.values())


def run(
    tasks: Iterable[str],
    budgets: Iterable[int],
    observations: Iterable[int],
    *,
    estimator: str = "fmpe",
    variant: str | None = None,
    base_only: bool = False,
    seed: int = 0,
    device: str | None = None,
    results: Path,
    run_dir: Path,
    num_samples: int = NUM_SAMPLES,
    show_progress: bool = True,
    deadline: Deadline | None = None,
    scoring_workers: int = 1,
    rounds: int = 1,
    cards: CardStore | None = None,
) -> list[dict]:
    """Runs every (task, budget, observation) cell of `estimator` (with the card's `variant`,
    if named; with the base card's settings alone if `base_only`) not yet in `results`.
    With `rounds` > 1, each observation gets its own posterior, trained in that many
    truncated sequential rounds that spend the budget between them.

    Repeated tasks, budgets or observations count once. With a `deadline`, a posterior is
    trained and scored (one unit) only if `expected_unit_seconds` fits in the time left; the
    units it refuses are in `deadline.left`. With `scoring_workers` > 1 on the CPU, a
    posterior's observations are scored in that many single-threaded worker processes.
    Hyperparameters come from the task cards in `cards` (default: the shipped ones).

    Returns:
        the rows of the requested cells that are done, those found in `results` and those
        added.
    """
    deadline = deadline or Deadline(None)
    get_estimator(estimator)
    label = method_label(estimator, variant, base_only, rounds)
    torch_device = resolve_device(device)
    store = ResultsStore(results)
    done = store.completed()
    cells = list(
        dict.fromkeys(
            (t, b, label, o, seed)
            for t in dict.fromkeys(tasks)
            for b in dict.fromkeys(budgets)
            for o in dict.fromkeys(observations)
        )
    )
    todo = [c for c in cells if c not in done]
    workers = scoring_workers if torch_device.type == "cpu" else 1
    # A unit is one posterior and the observations it is scored on: per task and budget, or
    # per observation with sequential rounds.
    per_unit = (lambda c: c[:2]) if rounds == 1 else (lambda c: (*c[:2], c[3]))
    with tqdm(total=len(cells), initial=len(cells) - len(todo), desc="benchmark") as bar:
        for unit_key in dict.fromkeys(map(per_unit, todo)):
            task_name, budget = unit_key[:2]
            observation = unit_key[2] if rounds > 1 else None
            unit = [c for c in todo if per_unit(c) == unit_key]
            experiment = Run(
                task_name, budget, estimator, variant, base_only, seed, rounds, observation
            )
            saved = experiment.posterior_path(run_dir)
            expected = expected_unit_seconds(
                store.rows(), task_name, budget, label, len(unit), saved.exists(), workers
            )
            name = f"{task_name} at {budget} ({label})"
            if not deadline.allows(
                name if observation is None else f"{name}, observation {observation}", expected
            ):
                continue
            task = get_task(task_name)
            bar.set_postfix_str(f"training {task_name} at {budget}")
            posterior, train_seconds = experiment.train(run_dir, torch_device, show_progress, cards)
            finished = store.completed()  # cells written meanwhile by a concurrent run
            bar.update(sum(c in finished for c in unit))
            observations = [c[3] for c in unit if c not in finished]
            bar.set_postfix_str(f"scoring {task_name} at {budget}")
            # A pool per posterior: it starts in seconds and serves minutes of scoring.
            with scoring_pool(workers if len(observations) > 1 else 1) as pool:
                for observation, scores in _scores(
                    pool, posterior, saved, task, observations, seed, num_samples
                ):
                    row = {
                        "task": task_name,
                        "budget": budget,
                        "estimator": label,
                        "observation": observation,
                        "seed": seed,
                        **scores,
                        "trainable_parameters": posterior.training_record.trainable_parameters,
                        "train_seconds": round(train_seconds, 2),
                        **provenance(torch_device),
                    }
                    if not store.add(row):
                        warnings.warn(
                            f"{row_key(row)} was written by a concurrent run", stacklevel=2
                        )
                    bar.update(1)
    final = store.completed()
    return [final[c] for c in cells if c in final]
