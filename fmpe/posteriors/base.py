"""What every posterior shares: the checks of input, the map to standardized coordinates,
rejection of samples outside the prior, and solves batched over many observations.

A subclass gives the density of z = (T(θ) - μ) / σ, where T is the identity or, with
`map_to_unbounded`, maps the prior's bounds onto R (see `UnboundedTransform`):

- ``_context(x_z: (b, *x_shape)) -> (b, ...)``: what the network needs of each observation;
- ``_sample_z(context: (N, ...), with_log_prob, options) -> (z (N, d), log q(z) (N,) | None,
  evaluations)``: one draw per row of context;
- ``_log_prob_z(z: (N, d), context: (N, ...), options) -> (log q(z) (N,), evaluations)``.
"""

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.distributions import Distribution
from tqdm.auto import tqdm

from fmpe.checks import as_count, as_float_tensor, check_device, check_shape
from fmpe.coordinates import ThetaCoordinates
from fmpe.networks.registry import accepts_nan
from fmpe.posteriors.record import TrainingRecord
from fmpe.standardize import Standardizer
from fmpe.unbounded import in_support

LOW_ACCEPTANCE = 0.1
FAILED_ACCEPTANCE = 1e-3  # after 10,000 draws of one observation, below this is an error
FAR_OUT = 1e3  # standard deviations of the training θ; beyond, log_prob is -inf


@dataclass(frozen=True)
class Cost:
    """What one call cost, returned with ``return_cost=True``.

    Attributes:
        evaluations: network evaluations (ODE right-hand sides, or flow passes).
        drawn: samples drawn, before those outside the prior's support were rejected.
        accepted: samples kept.
    """

    evaluations: int = 0
    drawn: int = 0
    accepted: int = 0

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drawn if self.drawn else 1.0


class Posterior(nn.Module):
    """q(θ | x) of a trained estimator.

    A single observation x has shape `x_shape`; a batch of b observations has shape
    (b, *x_shape), and every method then returns one result per observation, computed in
    batched calls of up to `chunk_size` rows over all observations together.

    Args:
        theta_coordinates: θ ↔ z, the map onto R and the z-scoring the training data fitted.
        x_standardizer: the z-scoring of x fitted on the training data.
        prior: the prior (samples outside its support are rejected); may be None.
        chunk_size: rows per batched call.

    Attributes:
        kind: the name a posterior file gives the class, under which it is registered in
            `fmpe.posteriors.POSTERIORS` (with its estimator, by `fmpe.register_estimator`).
    """

    kind: str

    def __init__(
        self,
        theta_coordinates: ThetaCoordinates,
        x_standardizer: Standardizer,
        prior: Distribution | None = None,
        chunk_size: int = 10_000,
    ):
        super().__init__()
        # Its two maps are submodules, so that they move with the posterior and are saved.
        self.theta_standardizer = theta_coordinates.standardizer
        self.theta_transform = theta_coordinates.transform
        self.x_standardizer = x_standardizer
        self.prior = prior
        self.chunk_size = as_count(chunk_size, "chunk_size", minimum=1)
        self.network_spec: dict | None = None
        self.embedding_spec: dict | str | None = None
        self.training_record: TrainingRecord | None = None
        self.metadata: dict = {}
        """JSON values saved with the posterior, e.g. the task it was trained for."""

    @property
    def theta_dim(self) -> int:
        return self.theta_standardizer.mean.shape[0]

    @property
    def x_shape(self) -> tuple[int, ...]:
        return tuple(self.x_standardizer.mean.shape)

    @property
    def device(self) -> torch.device:
        return self.theta_standardizer.mean.device

    @property
    def accepts_nan(self) -> bool:
        """Whether x may hold NaN: missing values that the embedding net reads (`"set"`)."""
        return accepts_nan(getattr(getattr(self, "network", None), "embedding_net", None))

    @property
    def dtype(self) -> torch.dtype:
        return self.theta_standardizer.mean.dtype

    @property
    def theta_coordinates(self) -> ThetaCoordinates:
        """θ ↔ z, the standardized unbounded coordinates the subclass's density lives in."""
        return ThetaCoordinates(self.theta_transform, self.theta_standardizer)

    def train(self, mode: bool = True) -> "Posterior":
        # A posterior is only ever evaluated: keep batch norm and dropout in inference mode.
        return super().train(False)

    # ----- what subclasses provide ------------------------------------------------------

    def _context(self, x_z: Tensor) -> Tensor:
        raise NotImplementedError

    def _sample_z(
        self, context: Tensor, with_log_prob: bool, options: dict
    ) -> tuple[Tensor, Tensor | None, int]:
        raise NotImplementedError

    def _log_prob_z(self, z: Tensor, context: Tensor, options: dict) -> tuple[Tensor, int]:
        raise NotImplementedError

    @property
    def _log_prob_rows(self) -> int:
        """Rows per `_log_prob_z` call."""
        return self.chunk_size

    def _file_options(self) -> dict:
        """What a posterior file must hold beyond the weights to rebuild this posterior."""
        return {}

    @classmethod
    def _init_options(cls, file_options: dict) -> dict:
        """Keyword arguments of the constructor, from `_file_options`."""
        return {}

    # ----- input checks -----------------------------------------------------------------

    def _observations(self, x: Tensor) -> tuple[Tensor, bool]:
        """Checks x and returns it as a batch (b, *x_shape), and whether it was one already."""
        x = as_float_tensor(x, "x")
        batched = x.dim() == len(self.x_shape) + 1
        if not batched:
            check_shape(x, self.x_shape, "x (one observation)")
        else:
            check_shape(x, (None, *self.x_shape), "x (a batch of observations)")
        check_device(x, self.device, "x")
        if torch.isinf(x).any() or (torch.isnan(x).any() and not self.accepts_nan):
            refused = "infinite" if self.accepts_nan else "NaN or infinite"
            raise ValueError(f"x contains {refused} values")
        return (x if batched else x.unsqueeze(0)).to(self.dtype), batched

    def _theta_rows(self, theta: Tensor, num_observations: int, batched: bool) -> Tensor:
        """Checks theta, (n, d) for one observation or (n, b, d) for b, and returns its rows
        observation by observation: (b·n, d)."""
        theta = as_float_tensor(theta, "theta")
        if batched:
            check_shape(theta, (None, num_observations, self.theta_dim), "theta (for a batch of x)")
        else:
            check_shape(theta, (None, self.theta_dim), "theta")
            theta = theta.unsqueeze(1)
        check_device(theta, self.device, "theta")
        return theta.to(self.dtype).transpose(0, 1).reshape(-1, self.theta_dim)

    # ----- coordinates ------------------------------------------------------------------

    def _embed(self, x: Tensor) -> Tensor:
        """x: (b, *x_shape) raw -> the context of each observation."""
        with torch.no_grad():
            return self._context(self.x_standardizer(x))

    def _inside(self, theta: Tensor, prior: Distribution | None = None) -> Tensor:
        """theta: (n, d) -> (n,) bool: strictly inside the support of `prior` (default this
        posterior's) and the bounds of `theta_transform` (where float rounding can put a sample
        on a bound)."""
        prior = prior if prior is not None else self.prior
        inside = self.theta_transform.inside(theta)
        if prior is not None:
            inside &= in_support(prior, theta)
        return inside

    def _from_z(self, z: Tensor, log_q_z: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """θ (n, d) of z (n, d), and log q(θ) (n,) of log q(z) (n,)."""
        coordinates = self.theta_coordinates
        theta = coordinates.from_z(z)
        if log_q_z is None:
            return theta, None
        return theta, log_q_z + coordinates.log_abs_det_jacobian(z)

    # ----- sampling ---------------------------------------------------------------------

    def _sample(
        self,
        n: int,
        x: Tensor,
        with_log_prob: bool,
        reject_outside_prior: bool,
        show_progress: bool,
        options: dict,
    ) -> tuple[Tensor, Tensor | None, Cost]:
        n = as_count(n, "the number of samples")
        x, batched = self._observations(x)
        context = self._embed(x)

        def draw(rows: Tensor) -> tuple[Tensor, Tensor | None, int]:
            with torch.no_grad():
                z, log_q_z, evaluations = self._sample_z(
                    context[rows.to(context.device)], with_log_prob, options
                )
            return *self._from_z(z, log_q_z), evaluations

        theta, log_prob, cost = self._accepted(
            n, len(x), draw, with_log_prob, reject_outside_prior, show_progress
        )
        if not batched:
            theta = theta[:, 0]
            log_prob = log_prob[:, 0] if with_log_prob else None
        return theta, log_prob, cost

    def _accepted(
        self,
        n: int,
        b: int,
        draw: Callable[[Tensor], tuple[Tensor, Tensor | None, int]],
        with_log_prob: bool,
        reject_outside_prior: bool,
        show_progress: bool,
        draws_per_call: int | None = None,
        prior: Distribution | None = None,
    ) -> tuple[Tensor, Tensor | None, Cost]:
        """n samples θ (n, b, d), with log q (n, b) if `with_log_prob`, for each of b
        observations: ``draw(rows)`` returns θ (k, d), log q (k,) or None, and its network
        evaluations, for rows (k,) the observation of each draw. Draws outside the prior's
        support of `prior` (default this posterior's) are rejected (with
        `reject_outside_prior`) and drawn again, in calls of at most `draws_per_call` rows
        (default `chunk_size`)."""
        draws_per_call = draws_per_call or self.chunk_size
        kept: list[list[tuple[Tensor, Tensor | None]]] = [[] for _ in range(b)]
        missing = torch.full((b,), n, dtype=torch.long)
        drawn = torch.zeros(b, dtype=torch.long)
        inside = torch.zeros(b, dtype=torch.long)
        evaluations = 0
        with tqdm(total=n * b, desc="sampling", disable=not show_progress, leave=False) as bar:
            while missing.sum() > 0:
                counts = self._draws_needed(missing, drawn, inside, draws_per_call)
                rows_of = torch.arange(b).repeat_interleave(counts)
                for rows in rows_of.split(draws_per_call):
                    theta, log_prob, cost = draw(rows)
                    evaluations += cost
                    ok = self._inside(theta, prior) if reject_outside_prior else None
                    observations, sizes = torch.unique_consecutive(rows, return_counts=True)
                    start = 0
                    for j, size in zip(observations.tolist(), sizes.tolist()):
                        part = slice(start, start + size)
                        start += size
                        theta_j = theta[part]
                        log_prob_j = log_prob[part] if with_log_prob else None
                        if ok is not None:
                            theta_j = theta_j[ok[part]]
                            log_prob_j = log_prob_j[ok[part]] if with_log_prob else None
                        drawn[j] += size
                        inside[j] += len(theta_j)
                        take = int(min(missing[j], len(theta_j)))
                        kept[j].append(
                            (theta_j[:take], log_prob_j[:take] if with_log_prob else None)
                        )
                        missing[j] -= take
                        bar.update(take)
        cost = Cost(evaluations, int(drawn.sum()), int(inside.sum()))
        if cost.acceptance_rate < LOW_ACCEPTANCE:
            warnings.warn(
                f"only {cost.acceptance_rate:.1%} of the samples fell inside the prior's "
                "support; the posterior may be poorly trained for this x",
                stacklevel=4,  # _accepted, _sample, sample: the caller of sample
            )
        theta = torch.stack([self._joined(pieces, 0, n) for pieces in kept], dim=1)  # (n, b, d)
        log_prob = None
        if with_log_prob:
            log_prob = torch.stack([self._joined(pieces, 1, n) for pieces in kept], dim=1)
        return theta, log_prob, cost

    def _joined(self, pieces: list[tuple], index: int, n: int) -> Tensor:
        """The `index`-th tensors of `pieces` concatenated; (0, ...) when there are none."""
        if pieces:
            return torch.cat([piece[index] for piece in pieces])
        shape = (n, self.theta_dim) if index == 0 else (n,)
        return torch.zeros(shape, dtype=self.dtype, device=self.device)

    def _draws_needed(self, missing: Tensor, drawn: Tensor, inside: Tensor, most: int) -> Tensor:
        """(b,) draws per observation for the next round: what is missing, scaled by the
        acceptance rate seen so far, at most `most`."""
        counts = missing.clone()
        seen = (drawn > 0) & (missing > 0)
        rate = inside[seen] / drawn[seen]
        failed = (drawn[seen] >= 10_000) & (rate < FAILED_ACCEPTANCE)
        if failed.any():
            j = int(seen.nonzero()[failed][0])
            raise RuntimeError(
                f"only {int(inside[j])} of {int(drawn[j])} samples fell inside the prior's "
                "support; the posterior is badly trained or x is far from the training data"
            )
        scaled = (missing[seen] / rate.clamp(min=FAILED_ACCEPTANCE) * 1.1).ceil().long()
        counts[seen] = scaled
        return counts.clamp(max=most)

    def sample(
        self,
        n: int,
        x: Tensor,
        *,
        reject_outside_prior: bool = True,
        show_progress: bool = False,
        return_cost: bool = False,
        **solver_options,
    ) -> Tensor | tuple[Tensor, Cost]:
        """Draws n samples from q(θ | x).

        Samples outside the prior's support are rejected and redrawn, with a warning when
        fewer than 10% are kept.

        Args:
            x: one observation (*x_shape) or a batch (b, *x_shape).
            return_cost: also return a `Cost` (network evaluations, acceptance).
            solver_options: fields of `SolverSettings` to override, e.g. method="rk4".

        Returns:
            the samples θ (n, d), or (n, b, d) for a batch of observations.
        """
        theta, _, cost = self._sample(
            n, x, False, reject_outside_prior, show_progress, solver_options
        )
        return (theta, cost) if return_cost else theta

    def sample_and_log_prob(
        self,
        n: int,
        x: Tensor,
        *,
        reject_outside_prior: bool = True,
        show_progress: bool = False,
        return_cost: bool = False,
        **solver_options,
    ) -> tuple[Tensor, Tensor] | tuple[Tensor, Tensor, Cost]:
        """Draws n samples and their log densities in one pass.

        Returns:
            the samples θ (n, d) and their log densities (n,), or (n, b, d) and (n, b)
            for a batch.
        """
        theta, log_prob, cost = self._sample(
            n, x, True, reject_outside_prior, show_progress, solver_options
        )
        return (theta, log_prob, cost) if return_cost else (theta, log_prob)

    def importance_sample(
        self,
        n: int,
        x: Tensor,
        log_likelihood: Callable[[Tensor, Tensor], Tensor],
        *,
        prior: Distribution | None = None,
        chunk_size: int | None = None,
        show_progress: bool = False,
    ):
        """Importance-samples the exact posterior with this one as the proposal.

        Args:
            x: one observation (*x_shape).
            log_likelihood: ``log_likelihood(theta: (m, d), x) -> (m,)``, the exact log L.
            prior: π; default this posterior's prior.
            chunk_size: samples per call; default this posterior's `chunk_size`.

        Returns:
            a `fmpe.diagnostics.importance.ImportanceResult`: weights, effective sample size,
            sample efficiency, log evidence and its standard error.
        """
        from fmpe.diagnostics.importance import importance_sample

        return importance_sample(
            self,
            n,
            x,
            log_likelihood,
            prior,
            chunk_size=chunk_size or self.chunk_size,
            show_progress=show_progress,
        )

    # ----- densities --------------------------------------------------------------------

    def log_prob(
        self,
        theta: Tensor,
        x: Tensor,
        *,
        show_progress: bool = False,
        return_cost: bool = False,
        **solver_options,
    ) -> Tensor | tuple[Tensor, Cost]:
        """Log q(θ | x). A point's value does not depend on the other points evaluated with it.

        Points outside the prior's support, or on its bounds, get -inf; rows with a NaN get
        NaN.

        Args:
            theta: (n, d) for one observation x (*x_shape), or (n, b, d) for a batch
                x (b, *x_shape).

        Returns:
            log_prob: (n,) or (n, b)
        """
        x, batched = self._observations(x)
        rows = self._theta_rows(theta, len(x), batched)
        n = rows.shape[0] // len(x)
        context = self._embed(x)
        observation = torch.arange(len(x), device=self.device).repeat_interleave(n)
        log_prob, evaluations = self._log_prob_of_rows(
            rows, context, observation, show_progress, solver_options
        )
        log_prob = log_prob.reshape(len(x), n).T
        log_prob = log_prob if batched else log_prob[:, 0]
        return (log_prob, Cost(evaluations)) if return_cost else log_prob

    def _log_prob_of_rows(
        self, rows: Tensor, context: Tensor, observation: Tensor, show_progress: bool, options: dict
    ) -> tuple[Tensor, int]:
        """log q(θ | x) of rows (N, d), row i given observation `observation[i]`."""
        nan = torch.isnan(rows).any(-1)
        inside = self._inside(rows)
        coordinates = self.theta_coordinates
        z = torch.where(inside.unsqueeze(-1), coordinates.to_z(rows), 0.0)
        # So far out that the density is 0 in any float; solving from there only overflows.
        far = (z.abs() > FAR_OUT).any(-1)
        solved = inside & ~far
        # A finite stand-in keeps the other rows out of the solver's error control.
        z = torch.where(solved.unsqueeze(-1), z, 0.0)
        log_q_z, evaluations = [], 0
        with tqdm(total=len(rows), desc="log_prob", disable=not show_progress, leave=False) as bar:
            for index in torch.arange(len(rows), device=self.device).split(self._log_prob_rows):
                with torch.no_grad():
                    piece, cost = self._log_prob_z(z[index], context[observation[index]], options)
                log_q_z.append(piece)
                evaluations += cost
                bar.update(len(index))
        log_q_z = torch.cat(log_q_z) if log_q_z else rows.new_zeros(0)
        log_prob = log_q_z + coordinates.log_abs_det_jacobian(z)
        failed = solved & ~torch.isfinite(log_prob)
        if failed.any():
            warnings.warn(
                f"the density of {int(failed.sum())} of {len(rows)} points could not be "
                "computed (the ODE solve failed); they get NaN",
                stacklevel=3,  # _log_prob_of_rows, log_prob: the caller of log_prob
            )
        log_prob = torch.where(solved, log_prob, -math.inf)
        return torch.where(nan | failed, math.nan, log_prob), evaluations

    # ----- the mode -------------------------------------------------------------------

    def _differentiable_log_prob_z(self, z: Tensor, context: Tensor) -> Tensor:
        """log q(z) (N,) of z (N, d), differentiable with respect to z."""
        raise NotImplementedError

    def map(self, x: Tensor, *, num_candidates: int = 1000, max_iterations: int = 100) -> Tensor:
        """The maximum a posteriori estimate, argmax over θ of q(θ | x).

        Starts from the most probable of `num_candidates` samples and climbs the exact log
        density (in θ's own coordinates) with L-BFGS, in the standardized coordinates z where
        the problem is well scaled.

        Args:
            x: one observation (*x_shape) or a batch (b, *x_shape).

        Returns:
            the mode θ (d,), or (b, d) for a batch.
        """
        x, batched = self._observations(x)
        num_candidates = as_count(num_candidates, "num_candidates", minimum=1)
        theta, log_prob = self.sample_and_log_prob(num_candidates, x)  # (n, b, d), (n, b)
        start = theta[log_prob.argmax(0), torch.arange(len(x))]
        context = self._embed(x)
        coordinates = self.theta_coordinates
        z = coordinates.to_z(start).detach().requires_grad_(True)
        optimizer = torch.optim.LBFGS(
            [z], max_iter=as_count(max_iterations, "max_iterations", minimum=1),
            line_search_fn="strong_wolfe",
        )  # fmt: skip

        def negative_log_prob() -> Tensor:
            optimizer.zero_grad()
            log_q_z = self._differentiable_log_prob_z(z, context)
            loss = -(log_q_z + coordinates.log_abs_det_jacobian(z)).sum()
            loss.backward()
            return loss

        optimizer.step(negative_log_prob)
        with torch.no_grad():
            mode = coordinates.from_z(z)
        return mode if batched else mode[0]

    def save(self, path) -> None:
        """Writes the posterior to one safetensors file (weights, and JSON configuration)."""
        from fmpe.posteriors.file import save_posterior  # the file format imports this module

        save_posterior(self, path)
