"""FMPE against NPE on the gravitational-wave task, with importance sampling and P–P plots.

    uv run python benchmarks/gw.py                    # the full comparison (hours on 2 cores)
    uv run python benchmarks/gw.py --smoke            # every step at a tiny scale (< 1 min)
    uv run python benchmarks/gw.py --score-only       # steps 1 and 5 only: training, scores,
                                                      # P–P and efficiency figures, summary
    uv run python benchmarks/gw.py --stop-after 2h    # stop between units; print how to go on
    uv run python benchmarks/gw.py --coordinates      # only: box or R for the bounded parameters
    uv run python benchmarks/gw.py --t-theta-embedding  # only: FMPE's (t, θ) as is or embedded

Both estimators train with the `gw` card's hyperparameters on the same waveforms (the same
budget, seed and epochs); every step is resumable, and a finished one is skipped when the
script runs again:

1. train and score (`fmpe.benchmark.run`, the results store gw_injections.csv): per injection,
   the importance-sampling efficiency and log evidence with the estimator as the proposal,
   −log q(θ*), and the credible level of θ* per parameter;
2. dynesty's nested sampling of the first injections' posteriors with the exact likelihood,
   φ_c-marginalized (`GWTask.phase_marginal`; φ_c is drawn afterwards from its conditional)
   (gw_dynesty.csv: log evidence, likelihood calls; the weighted samples are kept in the runs
   folder); once every reference is made, a second run of each with another seed
   (gw_dynesty_repeat.csv), whose distance from the first is dynesty's own spread;
3. reference posteriors of those injections: importance sampling with the exact likelihood
   from a defensive mixture of both estimators, a proposal adapted to the posterior from NPE
   (`adapt_flow_proposal` of `GWTask.phase_conditional_proposal`: a flow over the eight
   parameters besides φ_c, and φ_c drawn from its exact conditional; adapted again from its
   own flow in each further stage, `Scale.adaptive_stages`) and the prior, until the
   effective sample size reaches its target (gw_reference.csv; the samples are kept in the
   runs folder). No proposal alone decides it: the weights correct each one, and the
   estimators and the prior cover what the others miss. A reference takes an hour or more on
   2 cores (every sample needs FMPE's exact log density), so its adapted proposal and each
   round of samples are kept as they finish, and a stopped run resumes at the next round;
4. the Jensen–Shannon divergence of each estimator's 1-D marginals to the reference's, in
   mnat, with two checks of the reference: each dynesty run's samples against it (and the two
   runs against each other), and two halves of the reference against each other, its noise
   floor (gw_jsd.csv) (steps 2-4 take one injection at a time, so that a run stopped early
   leaves whole ones);
5. figures (gw_pp.png, gw_corner.png, gw_is_efficiency.png) and the summary gw_summary.md;
   the corner plot of injection 1 shows its reference, or dynesty's samples until it has one.

`--coordinates` runs only the measurement that decides how the card treats the bounded and
periodic parameters: each estimator trained with the card's settings on the prior's box
(samples outside it rejected) and on R (`map_to_unbounded`), compared by the held-out −log q in
θ's own coordinates (`fmpe sweep`'s map-onto-R stage on its own, rows in gw_coordinates.csv,
the table in gw_coordinates.md). `--t-theta-embedding` likewise decides whether FMPE's (t, θ)
gates the residual blocks as it is or through a residual network of its own, by validation
loss (gw_t_theta_embedding.csv and .md).

Every row names the machine it was measured on. With --stop-after, a run finishes the unit in
progress (an estimator's training and scoring, one injection's dynesty run, reference round
or JSDs), starts none that is not expected to fit (by the durations recorded so far), skips the
steps that need what it left undone, and prints the command that continues it.
"""

import argparse
import contextlib
import hashlib
import json
import math
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from scipy import stats
from torch import Tensor

import fmpe
from fmpe.benchmark import (
    RowLog,
    Run,
    machine_description,
    resolve_device,
    run,
    timestamp,
)
from fmpe.benchmark.deadline import Deadline
from fmpe.benchmark.sweep import SearchGrid, configuration_name, sweep, sweep_log
from fmpe.cli import add_stop_after
from fmpe.diagnostics import (
    ImportanceResult,
    PhaseConditionalProposal,
    adapt_flow_proposal,
    defensive_importance_sample,
    ks_uniform,
)
from fmpe.plot import pairplot, pp_plot
from fmpe.posteriors import Posterior
from fmpe.tasks import get_task
from fmpe.tasks.gw import PARAMETER_LABELS, GWTask

RESULTS = Path(__file__).parent / "results"
RUNS = Path(__file__).parent / "runs" / "gw"
ESTIMATORS = ("fmpe", "npe")
NAMES = {"fmpe": "FMPE", "npe": "NPE"}
PERIODIC = (4, 6, 7)  # φ_c, ψ and ra: the likelihood is periodic over each one's prior range
JSD_GRID = 400
REFERENCE_PRIOR_FRACTION = 0.05
# The shares of the reference's mixture besides the prior's: mostly the φ_c-conditional
# proposal adapted from NPE, the best measured on injection 1 (7.8% efficiency at best with
# 100,000 samples a round, against 1.05% for a flow over all nine parameters, NPE's 0.16% and
# 0.066% for a kernel density of dynesty's samples: gw_proposals.md); both estimators' shares
# keep it defensive.
REFERENCE_SHARES = {"fmpe": 0.075, "npe": 0.075, "adaptive": 0.8}
NOT_RUN = "Not run yet (`--score-only` skips this step)."
JSD_LABELS = {  # gw_jsd.csv's estimators, as the summary names them
    **NAMES,
    "dynesty": "dynesty",
    "dynesty_repeat": "dynesty, second seed",
    "dynesty_runs": "dynesty's two runs",
    "reference_halves": "reference halves",
}


@dataclass(frozen=True)
class Scale:
    """How much each step does."""

    budget: int = 100_000
    injections: int = 100  # scored per estimator: IS efficiency, log Z, P–P
    samples: int = 2_000  # posterior samples per injection, and proposal samples of its IS
    reference_injections: int = 5  # each with dynesty, a reference and JSDs
    reference_ess: int = 5_000
    reference_round: int = 10_000  # mixture samples per round, until the ESS is reached
    reference_max_samples: int = 1_000_000  # an ESS of 5,000 at 0.5% efficiency
    adaptive_samples: int = 100_000  # per round of adapting the reference's flow from NPE
    adaptive_rounds: int = 8
    # Each stage adapts again from the last one's flow (a new flow placed on its far better
    # weighted samples). On injection 3, stage 1's flow alone had an ESS of 0.2% of 100,000
    # samples and its reference 87 of 50,000; stage 2's flow alone 600-4,200 of 20,000. On
    # injection 5, stage 2's rounds had ESS 21-1,359 of 10,000, their heaviest weights in a
    # sky region it under-covered (sin δ ≈ 0.9): hence a third stage.
    adaptive_stages: int = 3
    jsd_samples: int = 10_000
    dynesty_live_points: int = 500
    dynesty_dlogz: float = 0.1
    dynesty_max_calls: int = 3_000_000
    dynesty_repeat: bool = True  # a second run per injection with another seed: its spread


SMOKE = Scale(
    budget=2_000,
    injections=5,
    samples=200,
    reference_injections=1,
    reference_ess=100,
    reference_round=1_000,
    reference_max_samples=3_000,
    adaptive_samples=500,
    adaptive_rounds=2,
    jsd_samples=500,
    dynesty_live_points=20,
    dynesty_dlogz=10.0,
    dynesty_max_calls=600,
)


# ----- small helpers ---------------------------------------------------------------------


def weighted_samples_path(runs: Path, scale: Scale, seed: int, kind: str, injection: int) -> Path:
    """Where one injection's weighted samples of `kind` (reference or dynesty) are kept."""
    return runs / f"gw_{scale.budget}_seed{seed}_{kind}{injection}.safetensors"


def save_weighted_samples(
    result: ImportanceResult, path: Path, metadata: dict[str, str] | None = None
) -> None:
    """Writes `result` to `path` whole or not at all (through a partial file), since a kept
    file is taken as finished."""
    partial = partial_path(path)
    tensors = {"theta": result.theta.contiguous(), "log_weights": result.log_weights}
    save_file(tensors, str(partial), metadata=metadata)
    partial.replace(path)


def partial_path(path: Path) -> Path:
    return path.with_name(path.name + ".partial")


def load_weighted_samples(path: Path) -> ImportanceResult:
    tensors = load_file(str(path))
    return ImportanceResult(tensors["theta"], tensors["log_weights"])


def posterior_file(args, scale: Scale, name: str) -> Path:
    """The saved posterior of estimator `name` in the runs folder."""
    return Run("gw", scale.budget, name, seed=args.seed).posterior_path(args.runs)


def file_digest(path: Path) -> str:
    """The first 12 hex digits of the SHA-256 of the file at `path`: which posterior a row used."""
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def saved_seconds(path: Path) -> float:
    """The `seconds` recorded in the metadata of the safetensors file at `path`."""
    with safe_open(str(path), "pt") as f:
        return float(f.metadata()["seconds"])


def units_due(
    kind: str,
    injections,
    path: Path,
    args,
    scale: Scale,
    deadline: Deadline,
    saved: dict,
    expected_seconds: float | None,
) -> Iterator[tuple[int, Path]]:
    """The injections whose weighted samples of `kind` are still to compute (and fit
    `deadline`, each expected to take `expected_seconds`), with the file to save them in;
    those already computed go into `saved`. A unit is done when its row is in `path` and its
    samples in the runs folder."""
    done = {int(r["injection"]) for r in RowLog(path).rows()}
    for i in injections:
        file = weighted_samples_path(args.runs, scale, args.seed, kind, i)
        if i in done and file.exists():
            saved[i] = load_weighted_samples(file)
        elif deadline.allows(f"{kind} {i}", expected_seconds):
            yield i, file


def derived_seed(seed: int, step: int) -> int:
    """An independent seed for the `step`-th use of `seed`: a reference's steps (0 its first
    adaptation stage, whose seed in turn derives the later stages', k its k-th round),
    dynesty's second run (1)."""
    return int(np.random.SeedSequence([seed, step]).generate_state(1)[0])


def recorded_seconds(path: Path) -> float | None:
    """The median `seconds` of a step's rows (one unit each); None without rows."""
    rows = RowLog(path).rows()
    return statistics.median(float(r["seconds"]) for r in rows) if rows else None


# ----- step 2: dynesty -------------------------------------------------------------------


class DynestyProblem:
    """The prior transform and likelihood of one injection, as dynesty calls them (in the
    processes of its pool, one torch thread each), over the eight parameters besides φ_c: the
    likelihood is φ_c-marginalized (`GWTask.phase_marginal`), and `complete` draws φ_c
    afterwards. On all nine, φ_c's ridges left dynesty's marginals of φ_c and ψ 89 and 40 mnat
    from injection 1's reference, whose halves agree to 0.6."""

    def __init__(self, task: GWTask, injection: int):
        self.phase = task.phase_marginal()
        self.x = task.observation(injection).double()
        low = task.prior.base_dist.low.double()
        self.width = (task.prior.base_dist.high.double() - low).numpy()[self.phase.rest]
        self.low = low.numpy()[self.phase.rest]
        self.periodic = [self.phase.rest.index(j) for j in PERIODIC if j != self.phase.index]

    def __setstate__(self, state: dict) -> None:
        # Unpickled in a worker of dynesty's pool: one thread, since each core has a worker.
        torch.set_num_threads(1)
        self.__dict__.update(state)

    def prior_transform(self, u: np.ndarray) -> np.ndarray:
        return self.low + self.width * u

    def log_likelihood(self, rest: np.ndarray) -> float:
        with torch.inference_mode():
            theta = self.phase.embed(torch.from_numpy(rest[None]))
            return float(self.phase.log_likelihood(theta, self.x)[0])

    def complete(self, rest: np.ndarray) -> Tensor:
        """Samples (n, 9) of the posterior from those (n, 8) of the φ_c-marginal one."""
        with torch.inference_mode():
            return self.phase.complete(self.phase.embed(torch.from_numpy(rest)), self.x)


def run_dynesty(
    task, injections, args, scale, machine, deadline: Deadline, kind: str = "dynesty"
) -> dict[int, ImportanceResult]:
    """dynesty's weighted posterior samples of `injections`, run or loaded; one injection per
    unit of `deadline`. `kind` "dynesty_repeat" is a second run with another seed, kept apart
    (gw_dynesty_repeat.csv)."""
    import dynesty
    import dynesty.pool

    path = args.out / f"gw_{kind}.csv"
    nested: dict[int, ImportanceResult] = {}
    expected = recorded_seconds(args.out / "gw_dynesty.csv")  # either kind: the same work
    for i, saved in units_due(kind, injections, path, args, scale, deadline, nested, expected):
        seed = args.seed + i if kind == "dynesty" else derived_seed(args.seed + i, 1)
        problem = DynestyProblem(task, i)
        start = time.perf_counter()
        with contextlib.ExitStack() as stack:
            pool, functions = None, (problem.log_likelihood, problem.prior_transform)
            if args.threads > 1:  # a process per thread; its start costs seconds
                pool = stack.enter_context(dynesty.pool.Pool(args.threads, *functions))
                functions = pool.loglike, pool.prior_transform
            sampler = dynesty.NestedSampler(
                *functions,
                len(problem.low),
                nlive=scale.dynesty_live_points,
                periodic=problem.periodic,
                # Random walks cost a fixed ~30 calls an iteration; dynesty's default here,
                # uniform draws in the bounding ellipsoids, fell to 1.5% efficiency (180 calls
                # an iteration) within 5 minutes on injection 1, over all nine parameters.
                sample="rwalk",
                rstate=np.random.default_rng(seed),
                pool=pool,
            )
            sampler.run_nested(
                dlogz=scale.dynesty_dlogz,
                maxcall=scale.dynesty_max_calls,
                print_progress=not args.quiet,
            )
        result = sampler.results
        torch.manual_seed(seed)
        theta = problem.complete(result.samples)
        seconds = time.perf_counter() - start
        log_weights = torch.from_numpy(result.logwt - result.logz[-1])
        nested[i] = ImportanceResult(theta, log_weights)
        save_weighted_samples(nested[i], saved)
        row = {
            "injection": i,
            "log_evidence": f"{result.logz[-1]:.4f}",
            "log_evidence_error": f"{result.logzerr[-1]:.4f}",
            "effective_sample_size": round(nested[i].effective_sample_size, 1),
            "likelihood_calls": int(np.sum(result.ncall)),  # of the marginal: 3 of L each
            "phase": "marginalized",
            "live_points": scale.dynesty_live_points,
            "dlogz": scale.dynesty_dlogz,
            "seconds": round(seconds, 1),
            "machine": machine,
            "finished_at": timestamp(),
        }
        RowLog(path, list(row)).add(row)
        print(
            f"{kind} {i}: log Z {result.logz[-1]:.3f} ± {result.logzerr[-1]:.3f}, ESS "
            f"{row['effective_sample_size']}, {row['likelihood_calls']} calls in {seconds:.0f} s"
        )
    return nested


# ----- step 3: reference posteriors ------------------------------------------------------


def reference_posterior(
    task: GWTask,
    posteriors: dict,
    injection: int,
    scale: Scale,
    folder: Path,
    seed: int,
    deadline: Deadline,
    show_progress: bool,
) -> tuple[ImportanceResult, float] | None:
    """Defensive importance sampling from both estimators' `posteriors`, a φ_c-conditional
    proposal adapted from NPE's (in `scale.adaptive_stages` stages, each starting from the
    last one's proposal) and the prior, in rounds until the effective sample size
    reaches its target (or the sample cap); returns the joined result and its seconds (the
    adaptation's included), or None if `deadline` stopped it first.

    The adapted proposal and each round's weighted samples are kept in `folder` as they finish,
    with their seconds, and a later call goes on from there; each step draws from a seed of
    its own (from `seed`), so that a resumed reference is the one an uninterrupted run makes.
    """
    x = task.observation(injection).to(posteriors["fmpe"].device)
    folder.mkdir(parents=True, exist_ok=True)
    adapted, flow_files = posteriors["npe"], []  # each stage starts from the last one's
    for stage in range(1, scale.adaptive_stages + 1):
        flow_file = folder / ("adaptive_flow" + (f"_{stage}" if stage > 1 else "") + ".safetensors")
        flow_files.append(flow_file)
        if flow_file.exists():
            adapted, _ = PhaseConditionalProposal.load(flow_file, task.prior, task.log_likelihood)
            continue
        expected = kept_seconds(folder, flow_file.name)
        if not deadline.allows(f"reference {injection}, its proposal (stage {stage})", expected):
            return None
        stage_seed = derived_seed(seed, 0)  # stage 1's, as before there were stages
        torch.manual_seed(stage_seed if stage == 1 else derived_seed(stage_seed, stage))
        start = time.perf_counter()
        adapted, _ = adapt_flow_proposal(
            adapted,
            x,
            task.log_likelihood,
            task.prior,
            samples=scale.adaptive_samples,
            rounds=scale.adaptive_rounds,
            proposal_for=task.phase_conditional_proposal,
            show_progress=show_progress,
        )
        adapted.save(partial_path(flow_file), {"seconds": f"{time.perf_counter() - start:.1f}"})
        partial_path(flow_file).replace(flow_file)
    proposals = {**posteriors, "adaptive": adapted}
    round_files = sorted(folder.glob("round*.safetensors"))
    rounds = [load_weighted_samples(file) for file in round_files]
    seconds = [saved_seconds(file) for file in [*flow_files, *round_files]]
    while not rounds or not reference_complete(ImportanceResult.joined(rounds), scale, injection):
        k = len(rounds) + 1
        if not deadline.allows(
            f"reference {injection}, round {k}", kept_seconds(folder, "round*.safetensors")
        ):
            return None
        torch.manual_seed(derived_seed(seed, k))
        start = time.perf_counter()
        result = defensive_importance_sample(
            list(proposals.values()),
            scale.reference_round,
            x,
            task.log_likelihood,
            task.prior,
            prior_fraction=REFERENCE_PRIOR_FRACTION,
            shares=[REFERENCE_SHARES[name] for name in proposals],
            show_progress=show_progress,
        )
        seconds.append(time.perf_counter() - start)
        save_weighted_samples(
            result, folder / f"round{k:04d}.safetensors", {"seconds": f"{seconds[-1]:.1f}"}
        )
        rounds.append(result)
    return ImportanceResult.joined(rounds), sum(seconds)


def kept_seconds(folder: Path, pattern: str) -> float | None:
    """The median seconds kept with the files named by `pattern` in the folders of every
    reference beside `folder` (its own included); None where there are none."""
    files = list(folder.parent.glob(f"*/{pattern}"))
    return statistics.median(map(saved_seconds, files)) if files else None


def reference_complete(result: ImportanceResult, scale: Scale, injection: int) -> bool:
    """Whether a reference's rounds so far suffice: its effective sample size reached the
    target, or another round would pass the sample cap (said, as the target is missed)."""
    if result.effective_sample_size >= scale.reference_ess:
        return True
    if result.num_samples + scale.reference_round <= scale.reference_max_samples:
        return False
    print(
        f"reference {injection}: ESS {result.effective_sample_size:.0f} after "
        f"{result.num_samples} samples, below the target {scale.reference_ess}; stopping at the cap"
    )
    return True


def run_references(
    task, posteriors, nested, args, scale, machine, deadline: Deadline
) -> dict[int, ImportanceResult]:
    """The reference posteriors of the injections dynesty has sampled (its cross-check),
    computed or loaded; each round of a reference is a unit of `deadline`."""
    path = args.out / "gw_reference.csv"
    references: dict[int, ImportanceResult] = {}
    # None: the rounds check the deadline themselves, so a reference starts whenever one fits.
    for i, saved in units_due("reference", nested, path, args, scale, deadline, references, None):
        folder = saved.with_suffix("")  # the adapted flow and the rounds so far
        made = reference_posterior(
            task, posteriors, i, scale, folder, args.seed + i, deadline, not args.quiet
        )
        if made is None:
            continue
        result, seconds = made
        save_weighted_samples(result, saved)
        references[i] = result
        row = {
            "injection": i,
            "snr": round(task.snr(i), 3),
            "num_samples": result.num_samples,
            "effective_sample_size": round(result.effective_sample_size, 1),
            "sample_efficiency": f"{result.sample_efficiency:.5g}",
            "log_evidence": f"{result.log_evidence:.4f}",
            "log_evidence_error": f"{result.log_evidence_error:.4f}",
            "prior_fraction": REFERENCE_PRIOR_FRACTION,
            "seconds": round(seconds, 1),
            "machine": machine,
            "finished_at": timestamp(),
        }
        RowLog(path, list(row)).add(row)
        print(f"reference {i}: ESS {result.effective_sample_size:.0f} of {result.num_samples}")
    return references


# ----- step 4: Jensen–Shannon divergences ------------------------------------------------


def marginal_jsd(
    samples: np.ndarray,
    reference: np.ndarray,
    reference_weights: np.ndarray,
    sample_weights: np.ndarray | None = None,
) -> float:
    """The Jensen–Shannon divergence (nats) of two 1-D distributions given by samples.

    Both are Gaussian kernel density estimates with the same bandwidth (Silverman's rule for
    the reference's effective sample size), on a common grid over the central 99.8% of both,
    weighted: weighted samples (a reference's, a nested sampler's) hold many of nearly no
    weight far out, which would stretch the grid beyond the kernels' reach.
    """
    weights = reference_weights / reference_weights.sum()
    sample_weights = (
        np.full(len(samples), 1 / len(samples))
        if sample_weights is None
        else sample_weights / sample_weights.sum()
    )
    n_eff = 1 / np.square(weights).sum()
    mean = (weights * reference).sum()
    spread = math.sqrt((weights * (reference - mean) ** 2).sum())
    bandwidth = 1.06 * spread * n_eff ** (-1 / 5)
    low = min(
        _weighted_quantile(samples, sample_weights, 0.001),
        _weighted_quantile(reference, weights, 0.001),
    )
    high = max(
        _weighted_quantile(samples, sample_weights, 0.999),
        _weighted_quantile(reference, weights, 0.999),
    )
    grid = np.linspace(low - 3 * bandwidth, high + 3 * bandwidth, JSD_GRID)
    p = _kde(reference, weights, grid, bandwidth)
    q = _kde(samples, sample_weights, grid, bandwidth)
    m = (p + q) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        kl_p = np.where(p > 0, p * np.log(p / m), 0.0).sum()
        kl_q = np.where(q > 0, q * np.log(q / m), 0.0).sum()
    return float(max(kl_p + kl_q, 0.0) / 2)


def _weighted_quantile(values: np.ndarray, weights: np.ndarray, q: float) -> float:
    order = np.argsort(values)
    cumulative = np.cumsum(weights[order])
    return float(values[order][np.searchsorted(cumulative, q * cumulative[-1])])


def _kde(values: np.ndarray, weights: np.ndarray, grid: np.ndarray, bandwidth: float):
    """The kernel density estimate on the grid, normalized to sum to 1 over the grid."""
    keep = weights > 0
    values, weights = values[keep], weights[keep]
    density = np.zeros_like(grid)
    for start in range(0, len(values), 20_000):
        part = slice(start, start + 20_000)
        z = (grid[None, :] - values[part, None]) / bandwidth
        density += (weights[part, None] * np.exp(-0.5 * z**2)).sum(0)
    return density / density.sum()


def jsd_row(task: GWTask, samples, sample_weights, reference, reference_weights) -> dict:
    """JSD in mnat per parameter (and their mean) of samples (n, 9) to a weighted reference."""
    row = {
        f"jsd_mnat_{name}": round(
            1000 * marginal_jsd(samples[:, j], reference[:, j], reference_weights, sample_weights),
            3,
        )
        for j, name in enumerate(task.parameter_names)
    }
    row["mean_jsd_mnat"] = round(float(np.mean(list(row.values()))), 3)
    return row


def weighted_arrays(result: ImportanceResult) -> tuple[np.ndarray, np.ndarray]:
    """θ (n, d) in float64 and the normalized weights (n,) of weighted samples."""
    return result.theta.double().numpy(), result.weights.numpy()


def run_jsd(task, posteriors, nested, repeats, references, args, scale, machine, deadline):
    """The JSDs to each reference not yet in gw_jsd.csv, of both estimators, of dynesty's
    samples (`nested`, and `repeats` where its second run is done, and the two runs to each
    other) and of the reference's halves; one injection per unit of `deadline` (each of its
    rows records the unit's seconds)."""
    path = args.out / "gw_jsd.csv"
    done = {(int(r["injection"]), r["estimator"]) for r in RowLog(path).rows()}
    for i, reference in references.items():
        # name: (samples, what they are compared with)
        dynesty = {"dynesty": (nested[i], reference)}
        if i in repeats:
            dynesty |= {
                "dynesty_repeat": (repeats[i], reference),
                "dynesty_runs": (repeats[i], nested[i]),
            }
        names = (*posteriors, *dynesty, "reference_halves")
        if all((i, name) in done for name in names):
            continue
        if not deadline.allows(f"JSD {i}", recorded_seconds(path)):
            continue
        start = time.perf_counter()
        digests = {name: file_digest(posterior_file(args, scale, name)) for name in posteriors}
        theta, weights = weighted_arrays(reference)
        x = task.observation(i).to(posteriors["fmpe"].device)
        rows = {}
        for name, posterior in posteriors.items():
            if (i, name) not in done:
                torch.manual_seed(args.seed + 100 + i)
                samples = posterior.sample(scale.jsd_samples, x).cpu().double().numpy()
                rows[name] = (len(samples), jsd_row(task, samples, None, theta, weights))
        for name, (samples, against) in dynesty.items():
            if (i, name) not in done:
                jsd = jsd_row(task, *weighted_arrays(samples), *weighted_arrays(against))
                rows[name] = (samples.num_samples, jsd)
        if (i, "reference_halves") not in done:
            # Two random halves of the reference: the divergence its finite sample alone gives.
            generator = torch.Generator().manual_seed(args.seed + i)
            first, second = torch.randperm(len(theta), generator=generator).numpy().reshape(2, -1)
            halves = jsd_row(task, theta[first], weights[first], theta[second], weights[second])
            rows["reference_halves"] = (len(first), halves)
        seconds = round(time.perf_counter() - start, 1)
        for name, (count, jsd) in rows.items():
            row = {"injection": i, "estimator": name, **jsd, "samples": count}
            row["posterior"] = digests.get(name, "")  # the estimator's file, where it has one
            row |= {"seconds": seconds, "machine": machine, "finished_at": timestamp()}
            RowLog(path, list(row)).add(row)
            print(f"JSD injection {i} {name}: mean {jsd['mean_jsd_mnat']} mnat")


# ----- step 5: figures and summary -------------------------------------------------------


def injection_rows(args, scale) -> dict[str, list[dict]]:
    rows = RowLog(args.out / "gw_injections.csv").rows()
    return {
        name: sorted(
            (
                r
                for r in rows
                if r["estimator"] == name
                and int(r["budget"]) == scale.budget
                and int(r["seed"]) == args.seed
                and int(r["observation"]) <= scale.injections
            ),
            key=lambda r: int(r["observation"]),
        )
        for name in ESTIMATORS
    }


def credible_levels(task: GWTask, rows: list[dict]) -> np.ndarray:
    """(N, 9) credible levels of θ* of the scored injections."""
    return np.array([[float(r[f"credible_level_{p}"]) for p in task.parameter_names] for r in rows])


def plot_pp(task, rows, path: Path) -> None:
    fig = Figure(figsize=(13, 5.2), layout="constrained")
    for ax, name in zip(fig.subplots(1, 2), ESTIMATORS):
        pp_plot(credible_levels(task, rows[name]), PARAMETER_LABELS, ax=ax)
        ax.set_title(NAMES[name])
    fig.savefig(path, dpi=120)


def plot_efficiency(rows, path: Path) -> None:
    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.add_subplot()
    values = {n: np.array([float(r["is_efficiency"]) for r in rows[n]]) for n in ESTIMATORS}
    positive = np.concatenate([v[v > 0] for v in values.values()])
    low = max(positive.min() if len(positive) else 1e-6, 1e-6)
    bins = np.logspace(math.log10(low) - 0.1, 0.0, 30)
    for k, (name, efficiency) in enumerate(values.items()):
        ax.hist(np.clip(efficiency, low, 1), bins=bins, alpha=0.5, color=f"C{k}", label=NAMES[name])
        ax.axvline(np.median(efficiency), color=f"C{k}", ls="--")
    ax.set_xscale("log")
    ax.set_xlabel("importance-sampling efficiency n_eff / N (dashed: median)")
    ax.set_ylabel("injections")
    ax.legend()
    fig.savefig(path, dpi=120)


def plot_corner(
    task, posteriors, weighted: ImportanceResult, label: str, injection, scale, seed, path: Path
) -> None:
    """Both estimators' samples of one injection against `weighted` samples (the reference's,
    or dynesty's until there is one), named `label`."""
    x = task.observation(injection).to(posteriors["fmpe"].device)
    torch.manual_seed(seed)
    sets = [posteriors[n].sample(scale.jsd_samples, x).cpu() for n in ESTIMATORS]
    sets.append(weighted.resample(scale.jsd_samples, torch.Generator().manual_seed(seed)))
    fig = pairplot(
        [s.double().numpy() for s in sets],
        PARAMETER_LABELS,
        truth=task.true_parameters(injection).double().numpy(),
        set_labels=[NAMES[n] for n in ESTIMATORS] + [label],
        colors=["C0", "C1", "k"],
    )
    fig.savefig(path, dpi=80)


def evidence_cell(row: dict | None) -> str:
    """A row's log evidence ± its standard error; empty without a row."""
    if row is None:
        return ""
    return f"{float(row['log_evidence']):.3f} ± {float(row['log_evidence_error']):.3f}"


def mean_jsd_cell(row: dict | None) -> str:
    return "" if row is None else f"{float(row['mean_jsd_mnat']):.2f}"


def spread(values: np.ndarray) -> str:
    """median [16th, 84th percentile]"""
    q16, q50, q84 = np.quantile(values, [0.16, 0.5, 0.84])
    return f"{q50:.3g} [{q16:.3g}, {q84:.3g}]"


def write_summary(task, posteriors, rows, args, scale, machine, command: str) -> None:
    lines = [
        "# FMPE against NPE on the gravitational-wave task",
        "",
        f"`{command}` (fmpe {fmpe.__version__}, finished {timestamp()}), on {machine}.",
        f"Budget {scale.budget} noise-free waveforms (noise drawn afresh at every use), seed "
        f"{args.seed}; both estimators with the `gw` card's hyperparameters.",
        "",
        "## Training and importance sampling",
        "",
        f"Per injection (1-{scale.injections}, network SNR ≥ 8), {scale.samples} proposal samples;"
        " efficiency median [16th, 84th percentile]. Training seconds are those the saved"
        " posterior recorded: a posterior trained beside other jobs records more.",
        "",
        "| estimator | training s | IS efficiency | min / max | −log q(θ*) median |",
        "|---|---|---|---|---|",
    ]
    for name in ESTIMATORS:
        efficiency = np.array([float(r["is_efficiency"]) for r in rows[name]])
        nltp = np.array([float(r["nltp"]) for r in rows[name]])
        lines.append(
            f"| {NAMES[name]} | {float(rows[name][0]['train_seconds']):.0f} | "
            f"{spread(efficiency)} | {efficiency.min():.3g} / {efficiency.max():.3g} | "
            f"{np.median(nltp):.2f} |"
        )
    lines += ["", "## P–P: KS p-values of the credible levels of θ*", ""]
    lines += ["| estimator | " + " | ".join(PARAMETER_LABELS) + " | combined (Fisher) |"]
    lines += ["|---" * (len(PARAMETER_LABELS) + 2) + "|"]
    for name in ESTIMATORS:
        _, pvalues = ks_uniform(credible_levels(task, rows[name]))
        combined = stats.combine_pvalues(pvalues, method="fisher").pvalue
        cells = " | ".join(f"{p:.3g}" for p in pvalues)
        lines.append(f"| {NAMES[name]} ({len(rows[name])}) | {cells} | {combined:.3g} |")

    references = RowLog(args.out / "gw_reference.csv").rows()
    lines += [
        "",
        "## Reference posteriors and log evidence",
        "",
        "Defensive mixture: "
        + ", ".join(
            f"{100 * share:.1f}% {NAMES.get(name, 'a φ_c-conditional flow adapted from NPE')}"
            for name, share in REFERENCE_SHARES.items()
        )
        + f", {100 * REFERENCE_PRIOR_FRACTION:.0f}% prior; target ESS {scale.reference_ess}.",
        "",
        "| injection | SNR | samples | ESS | log Z reference | log Z FMPE − ref | "
        "log Z NPE − ref |",
        "|---|---|---|---|---|---|---|",
    ]
    if not references:
        lines[-2:] = [NOT_RUN]
    by_injection = {n: {int(r["observation"]): r for r in rows[n]} for n in ESTIMATORS}
    for r in references:
        i = int(r["injection"])
        differences = []
        for name in ESTIMATORS:
            scored = by_injection[name].get(i)
            if scored is None:
                differences.append("")
                continue
            delta = float(scored["is_log_evidence"]) - float(r["log_evidence"])
            differences.append(f"{delta:+.3f} ± {float(scored['is_log_evidence_error']):.3f}")
        lines.append(
            f"| {i} | {float(r['snr']):.1f} | {r['num_samples']} | "
            f"{float(r['effective_sample_size']):.0f} | {evidence_cell(r)} | "
            f"{' | '.join(differences)} |"
        )

    jsd = RowLog(args.out / "gw_jsd.csv").rows()
    lines += [
        "",
        "## Jensen–Shannon divergence to the reference (mnat), mean over injections",
        "",
        "`dynesty`: its weighted samples, the cross-check of the reference; `dynesty, second "
        "seed`: those of its second run; `dynesty's two runs`: the runs to each other, dynesty's "
        "own spread. `reference halves`: between two random halves of the reference, its noise "
        "floor.",
        "",
        "| estimator | injections | " + " | ".join(PARAMETER_LABELS) + " | mean | max |",
        "|---" * (len(PARAMETER_LABELS) + 4) + "|",
    ]
    if not jsd:
        lines[-2:] = [NOT_RUN]
    else:
        kept = ", ".join(
            f"{NAMES[n]} {file_digest(posterior_file(args, scale, n))} ({p.training_record.epochs} "
            f"epochs, best validation loss {p.training_record.best_validation_loss:.4f})"
            for n, p in posteriors.items()
        )
        lines[-3:-3] = [
            "",
            f"FMPE's and NPE's rows: of the posteriors kept in the runs folder ({kept}; the "
            "`posterior` column of gw_jsd.csv names each row's). The scored rows above name no "
            "posterior file: they are of the posteriors in the runs folder when they were "
            "scored.",
        ]
    for name, label in JSD_LABELS.items():
        selected = [r for r in jsd if r["estimator"] == name]
        if not selected:
            continue
        table = np.array(
            [[float(r[f"jsd_mnat_{p}"]) for p in task.parameter_names] for r in selected]
        )
        cells = " | ".join(f"{v:.2f}" for v in table.mean(0))
        lines.append(
            f"| {label} | {len(selected)} | {cells} | {table.mean():.2f} | {table.max():.2f} |"
        )

    dynesty_rows = RowLog(args.out / "gw_dynesty.csv").rows()
    repeat_rows = {
        int(r["injection"]): r for r in RowLog(args.out / "gw_dynesty_repeat.csv").rows()
    }
    reference_evidence = {int(r["injection"]): r for r in references}
    jsd_of = {(int(r["injection"]), r["estimator"]): r for r in jsd}
    lines += [
        "",
        "## The reference against dynesty",
        "",
        f"dynesty: {scale.dynesty_live_points} live points, random walks, dlogz "
        f"{scale.dynesty_dlogz}, at most {scale.dynesty_max_calls:,} calls (a run that reached "
        "them stopped before dlogz) of the φ_c-marginalized likelihood (3 of the likelihood "
        "each), φ_c then drawn from its conditional. The JSD is that of dynesty's weighted "
        "samples to the reference; the runs over all nine parameters before it are in "
        "gw_dynesty_superseded.csv. The second run differs in its seed alone.",
        "",
        "| injection | log Z dynesty | log Z reference | mean JSD (mnat) | max JSD | calls | s | "
        "log Z second seed | its mean JSD | between the runs |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    if not dynesty_rows:
        lines[-2:] = [NOT_RUN]
    for r in dynesty_rows:
        i = int(r["injection"])
        reference, divergence = reference_evidence.get(i), jsd_of.get((i, "dynesty"))
        divergences = ""
        if divergence:
            values = [float(divergence[f"jsd_mnat_{p}"]) for p in task.parameter_names]
            divergences = f"{float(divergence['mean_jsd_mnat']):.2f} | {max(values):.2f}"
        repeat = [
            evidence_cell(repeat_rows.get(i)),
            mean_jsd_cell(jsd_of.get((i, "dynesty_repeat"))),
            mean_jsd_cell(jsd_of.get((i, "dynesty_runs"))),
        ]
        lines.append(
            f"| {i} | {evidence_cell(r)} | {evidence_cell(reference)} | "
            f"{divergences or ' | '} | {r['likelihood_calls']} | {float(r['seconds']):.0f} | "
            + " | ".join(repeat)
            + " |"
        )
    lines += [
        "",
        "Figures: gw_pp.png (P–P, 95% simultaneous bands), "
        + ("gw_corner.png (injection 1), " if (args.out / "gw_corner.png").exists() else "")
        + "gw_is_efficiency.png.",
        "",
    ]
    (args.out / "gw_summary.md").write_text("\n".join(lines))


# ----- the run ---------------------------------------------------------------------------


def train_and_score(task, name: str, args, scale, device, deadline: Deadline) -> Posterior | None:
    """Step 1 for one estimator (`fmpe.benchmark.run`, one unit of `deadline`): its posterior,
    or None if the deadline left it undone."""
    refused = len(deadline.left)
    run(
        ["gw"],
        [scale.budget],
        range(1, scale.injections + 1),
        estimator=name,
        seed=args.seed,
        device=args.device,
        results=args.out / "gw_injections.csv",
        run_dir=args.runs,
        num_samples=scale.samples,
        show_progress=not args.quiet,
        deadline=deadline,
    )
    if len(deadline.left) > refused:
        return None
    experiment = Run(task.name, scale.budget, name, seed=args.seed)
    posterior, _ = experiment.train(args.runs, device, show_progress=False)
    return posterior


@dataclass(frozen=True)
class Search:
    """A measurement that decides one setting of the `gw` card: `fmpe sweep`'s search with
    `grid` for each of `estimators`, rows in gw_<file>.csv, the table in gw_<file>.md."""

    file: str
    estimators: tuple[str, ...]
    grid: SearchGrid
    column: str  # the table's name for the setting the search varies
    describe: Callable[[dict], str]  # a row's value of that setting
    text: tuple[str, ...]  # the table's title and what it measures


T_THETA_WIDTHS = [64, 128, 256]
T_THETA_EMBEDDED = {"model": {"network_options": {"t_theta_widths": T_THETA_WIDTHS}}}
# Explicit, because the card now embeds (t, θ): the committed row of this configuration, trained
# before that, reads "{}".
T_THETA_AS_IT_IS = {"model": {"network_options": {"t_theta_widths": []}}}


def t_theta_embedding(row: dict) -> str:
    """How a `--t-theta-embedding` row's configuration treats (t, θ)."""
    options = json.loads(row["configuration"]).get("model", {}).get("network_options", {})
    widths = options.get("t_theta_widths")
    return "residual net " + "-".join(map(str, widths)) if widths else "none"


SEARCHES = {
    "coordinates": Search(
        "coordinates",
        ESTIMATORS,
        SearchGrid(stages={name: {0: []} for name in ESTIMATORS}),
        "map onto R",
        lambda row: "yes" if row["map_to_unbounded"] == "True" else "no",
        (
            "# The gw task's bounded parameters: the prior's box or R",
            "",
            "`python benchmarks/gw.py --coordinates` (`fmpe sweep`'s map-onto-R stage on its "
            "own): each estimator with the `gw` card's settings, trained on the same waveforms "
            "on the prior's box (samples outside it rejected) and on R (`map_to_unbounded`). "
            "Validation losses live in different coordinates, so the held-out −log q in θ's "
            "own coordinates decides.",
        ),
    ),
    "t-theta-embedding": Search(
        "t_theta_embedding",
        ("fmpe",),
        SearchGrid(stages={"fmpe": {0: [[T_THETA_AS_IT_IS, T_THETA_EMBEDDED]]}}, unbounded=[]),
        "(t, θ) embedding",
        t_theta_embedding,
        (
            "# The gw task's (t, θ): as it is, or embedded first",
            "",
            "`python benchmarks/gw.py --t-theta-embedding`: FMPE with the `gw` card's settings, "
            "(t, θ) gating every residual block as it is or through a residual network of its "
            f"own (`t_theta_widths = {T_THETA_WIDTHS}`, as the FMPE paper embeds (t, θ) for "
            "gravitational waves), trained on the same waveforms and chosen by validation loss.",
        ),
    ),
}
"""The `--coordinates` and `--t-theta-embedding` measurements."""


def run_search(search: Search, args, scale, device, deadline: Deadline) -> None:
    """Trains `search`'s configurations not yet in its CSV (one a unit of `deadline`) and
    writes its table, with each estimator's choice once its search is finished."""
    results = args.out / f"gw_{search.file}.csv"
    chosen = {}
    for name in search.estimators:
        chosen[name] = sweep(
            "gw",
            scale.budget,
            estimator=name,
            seed=args.seed,
            results=results,
            show_progress=not args.quiet,
            device=device,
            deadline=deadline,
            grid=search.grid,
        )
        if chosen[name] is None:
            break
    lines = [
        *search.text,
        "",
        f"| estimator | budget | {search.column} | best validation loss | held-out −log q | "
        "training s | chosen | machine |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in sweep_log(results).rows():
        choice = chosen.get(r["estimator"])
        picked = choice is not None and r["configuration"] == configuration_name(choice)
        lines.append(
            f"| {NAMES[r['estimator']]} | {r['budget']} | {search.describe(r)} | "
            f"{float(r['validation_loss']):.4f} | {float(r['heldout_nll']):.3f} | "
            f"{float(r['train_seconds']):.0f} | {'yes' if picked else ''} | {r['machine']} |"
        )
    results.with_suffix(".md").write_text("\n".join(lines) + "\n")


def analyse(task, posteriors, args, scale, machine, command: str, deadline: Deadline) -> None:
    """Steps 2-5 (2-4 unless --score-only), with both estimators' posteriors."""
    references: dict[int, ImportanceResult] = {}
    if not args.score_only:
        # One injection at a time through steps 2-4, so that a deadline leaves whole ones done.
        first_runs: dict[int, ImportanceResult] = {}  # dynesty's
        for i in range(1, scale.reference_injections + 1):
            nested = run_dynesty(task, [i], args, scale, machine, deadline)
            reference = run_references(task, posteriors, nested, args, scale, machine, deadline)
            run_jsd(task, posteriors, nested, {}, reference, args, scale, machine, deadline)
            references |= reference
            first_runs |= nested
        # dynesty's second runs after every reference, which the comparison needs first.
        for i in references if scale.dynesty_repeat else ():
            repeat = run_dynesty(task, [i], args, scale, machine, deadline, "dynesty_repeat")
            reference = {i: references[i]}
            run_jsd(task, posteriors, first_runs, repeat, reference, args, scale, machine, deadline)
    rows = injection_rows(args, scale)
    plot_pp(task, rows, args.out / "gw_pp.png")
    plot_efficiency(rows, args.out / "gw_is_efficiency.png")
    corner = (1, scale, args.seed, args.out / "gw_corner.png")
    nested = weighted_samples_path(args.runs, scale, args.seed, "dynesty", 1)
    reference = weighted_samples_path(args.runs, scale, args.seed, "reference", 1)
    if 1 in references or reference.exists():  # made by this run, or by an earlier one
        samples = references[1] if 1 in references else load_weighted_samples(reference)
        plot_corner(task, posteriors, samples, "reference (IS)", *corner)
    elif nested.exists():
        label = "dynesty (no reference yet)"
        plot_corner(task, posteriors, load_weighted_samples(nested), label, *corner)
    write_summary(task, posteriors, rows, args, scale, machine, command)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="every step at a tiny scale")
    parser.add_argument("--budget", type=int, help=f"waveforms (default {Scale.budget})")
    parser.add_argument("--injections", type=int, help=f"scored (default {Scale.injections})")
    parser.add_argument("--samples", type=int, help=f"per injection (default {Scale.samples})")
    parser.add_argument(
        "--reference-injections",
        type=int,
        help="injections 1-N get dynesty, a reference and JSDs, then dynesty's second runs "
        f"(default {Scale.reference_injections})",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 on a busy CPU)")
    parser.add_argument("--out", type=Path, help="results folder (default benchmarks/results)")
    parser.add_argument("--runs", type=Path, help="posteriors and samples (benchmarks/runs/gw)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument(
        "--score-only",
        action="store_true",
        help="train and score, then the P–P and efficiency figures and the summary: no "
        "reference posteriors, JSDs, dynesty or corner plot (the costly steps)",
    )
    measurement = parser.add_mutually_exclusive_group()
    measurement.add_argument(
        "--coordinates",
        action="store_const",
        const="coordinates",
        dest="search",
        help="only the measurement of the bounded parameters' coordinates: each estimator on "
        "the prior's box and on R, chosen by held-out −log q (gw_coordinates.csv and .md)",
    )
    measurement.add_argument(
        "--t-theta-embedding",
        action="store_const",
        const="t-theta-embedding",
        dest="search",
        help="only the measurement of FMPE's (t, θ) embedding: (t, θ) into the gates as it is "
        "or through a residual network, chosen by validation loss (gw_t_theta_embedding.*)",
    )
    add_stop_after(parser, "the unit")
    args = parser.parse_args(argv)
    deadline = Deadline.after(args.stop_after)
    scale = SMOKE if args.smoke else Scale()
    overrides = {
        k: getattr(args, k) for k in ("budget", "injections", "samples", "reference_injections")
    }
    scale = replace(scale, **{k: v for k, v in overrides.items() if v is not None})
    smoke_folder = RUNS.with_name("gw-smoke")
    args.out = args.out or (smoke_folder / "results" if args.smoke else RESULTS)
    args.runs = args.runs or (smoke_folder if args.smoke else RUNS)
    args.out.mkdir(parents=True, exist_ok=True)
    args.runs.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    machine = machine_description(device) + f", {args.threads} torch thread(s)"
    command = (
        "python benchmarks/gw.py "
        + ("--smoke" if args.smoke else f"--budget {scale.budget} --seed {args.seed}")
        + (" --score-only" if args.score_only else "")
    )
    task = get_task("gw")
    if scale.injections > task.num_observations:
        raise SystemExit(f"the gw task has {task.num_observations} injections")

    if args.search:
        run_search(SEARCHES[args.search], args, scale, device, deadline)
    else:
        posteriors = {
            name: train_and_score(task, name, args, scale, device, deadline) for name in ESTIMATORS
        }
        if None not in posteriors.values():
            analyse(task, posteriors, args, scale, machine, command, deadline)
    print(f"results in {args.out}")
    if deadline.left:
        continuation = sys.argv[1:] if argv is None else argv
        print(deadline.summary("uv run python benchmarks/gw.py " + shlex.join(continuation)))


if __name__ == "__main__":
    main()
