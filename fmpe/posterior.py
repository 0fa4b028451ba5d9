"""The trained posterior q(θ | x): sampling and exact log densities by solving the flow's ODE."""

import math
import warnings
from dataclasses import replace

import torch
from torch import Tensor, nn
from torch.distributions import Distribution
from tqdm.auto import tqdm

from fmpe.network import VelocityNetwork
from fmpe.ode import Solution, SolverSettings, solve, standard_normal_log_prob
from fmpe.standardize import Standardizer
from fmpe.unbounded import UnboundedTransform
from fmpe.validation import as_float_tensor, check_device, check_shape

LOW_ACCEPTANCE = 0.1


def within_support(prior: Distribution, theta: Tensor) -> Tensor:
    """Which rows of theta (n, d) lie inside the prior's support: (n,) bool."""
    on_cpu = theta.cpu()  # priors usually hold their parameters on the CPU
    try:
        inside = prior.support.check(on_cpu)
    except NotImplementedError:
        inside = torch.isfinite(prior.log_prob(on_cpu))
    return inside.reshape(theta.shape[0], -1).all(-1).to(theta.device)


class Posterior(nn.Module):
    """q(θ | x) defined by a velocity network trained with flow matching.

    The flow runs in standardized coordinates z = (T(θ) - μ) / σ, where T is the identity or,
    with `FMPE(..., map_to_unbounded=True)`, maps the prior's bounds onto R (see
    `UnboundedTransform`); densities are mapped back with the Jacobians of both maps.

    A single observation x has shape `x_shape`; a batch of b observations has shape
    (b, *x_shape) and every method then returns one result per observation.

    Args:
        network: the velocity network.
        theta_standardizer, x_standardizer: the z-scorings fitted on the training data.
        prior: the prior (used to reject samples outside its support); may be None.
        theta_transform: T, applied to θ before the z-scoring; None for the identity.
        solver: the default ODE settings; every method accepts others.
    """

    def __init__(
        self,
        network: VelocityNetwork,
        theta_standardizer: Standardizer,
        x_standardizer: Standardizer,
        prior: Distribution | None = None,
        solver: SolverSettings | None = None,
        chunk_size: int = 10_000,
        theta_transform: UnboundedTransform | None = None,
    ):
        super().__init__()
        self.network = network.eval()
        self.theta_transform = theta_transform or UnboundedTransform.identity(network.theta_dim)
        self.theta_standardizer = theta_standardizer
        self.x_standardizer = x_standardizer
        self.prior = prior
        self.solver = solver or SolverSettings()
        self.chunk_size = chunk_size
        self.acceptance_rate: float | None = None
        self.evaluations = 0

    @property
    def theta_dim(self) -> int:
        return self.network.theta_dim

    @property
    def x_shape(self) -> tuple[int, ...]:
        return self.network.x_shape

    @property
    def device(self) -> torch.device:
        return self.theta_standardizer.mean.device

    @property
    def dtype(self) -> torch.dtype:
        return self.theta_standardizer.mean.dtype

    def train(self, mode: bool = True) -> "Posterior":
        # A posterior is only ever evaluated: keep batch norm and dropout in inference mode.
        return super().train(False)

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
        if not torch.isfinite(x).all():
            raise ValueError("x contains NaN or infinite values")
        return (x if batched else x.unsqueeze(0)).to(self.dtype), batched

    def _settings(self, overrides: dict) -> SolverSettings:
        return replace(self.solver, **overrides) if overrides else self.solver

    # ----- the flow ---------------------------------------------------------------------

    def _field(self, embedded_x: Tensor):
        """The velocity field for one embedded observation (1, k), for any number of rows."""

        def field(t: Tensor, z: Tensor) -> Tensor:
            return self.network.forward_embedded(t, z, embedded_x.expand(z.shape[0], -1))

        return field

    def _embed(self, x: Tensor) -> Tensor:
        """x: (b, *x_shape) raw -> (b, k)"""
        with torch.no_grad():
            return self.network.embed(self.x_standardizer(x))

    def _solve(self, *args, **kwargs) -> Solution:
        solution = solve(*args, **kwargs)
        self.evaluations += solution.evaluations
        return solution

    def _draw(
        self, n: int, embedded_x: Tensor, settings: SolverSettings, with_log_prob: bool
    ) -> tuple[Tensor, Tensor | None]:
        """n samples θ (n, d) for one embedded observation (1, k), with log q (n,) if asked."""
        z0 = torch.randn(n, self.theta_dim, device=self.device, dtype=self.dtype)
        solution = self._solve(
            self._field(embedded_x), z0, 0.0, 1.0, settings, track_log_density=with_log_prob
        )
        u = self.theta_standardizer.inverse(solution.theta)
        theta = self.theta_transform.inverse(u)
        if not with_log_prob:
            return theta, None
        log_prob = (
            standard_normal_log_prob(z0)
            + solution.log_density_change
            + self.theta_standardizer.log_abs_det_jacobian()
            + self.theta_transform.log_abs_det_jacobian(u)
        )
        return theta, log_prob

    def _sample_one(
        self,
        n: int,
        embedded_x: Tensor,
        settings: SolverSettings,
        with_log_prob: bool,
        reject_outside_prior: bool,
        progress: tqdm,
    ) -> tuple[Tensor, Tensor | None, int, int]:
        """n accepted samples for one observation, how many were drawn and how many of those
        fell inside the prior's support."""
        kept_theta, kept_log_prob = [], []
        num_kept, num_drawn, num_inside = 0, 0, 0
        while num_kept < n:
            missing = n - num_kept
            batch = missing
            if num_drawn > 0:
                rate = num_inside / num_drawn
                if num_drawn >= 10_000 and rate < 1e-3:
                    raise RuntimeError(
                        f"only {num_inside} of {num_drawn} samples fell inside the prior's "
                        "support; the posterior is badly trained or x is far from the training data"
                    )
                batch = math.ceil(missing / max(rate, 1e-3) * 1.1)
            batch = min(self.chunk_size, batch)
            theta, log_prob = self._draw(batch, embedded_x, settings, with_log_prob)
            num_drawn += batch
            if reject_outside_prior:
                inside = self._inside(theta)
                theta = theta[inside]
                log_prob = log_prob[inside] if with_log_prob else None
            num_inside += len(theta)
            theta, log_prob = theta[:missing], (log_prob[:missing] if with_log_prob else None)
            kept_theta.append(theta)
            kept_log_prob.append(log_prob)
            num_kept += len(theta)
            progress.update(len(theta))
        log_prob = torch.cat(kept_log_prob) if with_log_prob else None
        return torch.cat(kept_theta), log_prob, num_drawn, num_inside

    def _sample(
        self,
        n: int,
        x: Tensor,
        with_log_prob: bool,
        reject_outside_prior: bool,
        show_progress: bool,
        solver_options: dict,
    ) -> tuple[Tensor, Tensor | None]:
        if not isinstance(n, int) or n < 0:
            raise ValueError(f"the number of samples must be a non-negative int, got {n!r}")
        x, batched = self._observations(x)
        settings = self._settings(solver_options)
        embedded = self._embed(x)
        results, num_drawn, num_inside = [], 0, 0
        with tqdm(
            total=n * len(x), desc="sampling", disable=not show_progress, leave=False
        ) as progress:
            for e in embedded:
                theta, log_prob, drawn, inside = self._sample_one(
                    n, e.unsqueeze(0), settings, with_log_prob, reject_outside_prior, progress
                )
                results.append((theta, log_prob))
                num_drawn += drawn
                num_inside += inside
        self._report_acceptance(num_inside, num_drawn)
        theta = torch.stack([r[0] for r in results], dim=1)  # (n, b, d)
        log_prob = torch.stack([r[1] for r in results], dim=1) if with_log_prob else None
        if not batched:
            theta = theta[:, 0]
            log_prob = log_prob[:, 0] if with_log_prob else None
        return theta, log_prob

    def _report_acceptance(self, num_inside: int, num_drawn: int) -> None:
        self.acceptance_rate = num_inside / num_drawn if num_drawn else 1.0
        if self.acceptance_rate < LOW_ACCEPTANCE:
            warnings.warn(
                f"only {self.acceptance_rate:.1%} of the samples fell inside the prior's "
                "support; the posterior may be poorly trained for this x",
                stacklevel=3,
            )

    # ----- public API -------------------------------------------------------------------

    def sample(
        self,
        n: int,
        x: Tensor,
        *,
        reject_outside_prior: bool = True,
        show_progress: bool = False,
        **solver_options,
    ) -> Tensor:
        """Draws n samples from q(θ | x).

        Samples outside the prior's support are rejected and redrawn; the fraction kept is
        stored in `acceptance_rate`, with a warning when it is low.

        Args:
            x: one observation (*x_shape) or a batch (b, *x_shape).
            solver_options: fields of `SolverSettings` to override, e.g. method="rk4".

        Returns:
            theta: (n, d), or (n, b, d) for a batch of observations.
        """
        return self._sample(n, x, False, reject_outside_prior, show_progress, solver_options)[0]

    def sample_and_log_prob(
        self,
        n: int,
        x: Tensor,
        *,
        reject_outside_prior: bool = True,
        show_progress: bool = False,
        **solver_options,
    ) -> tuple[Tensor, Tensor]:
        """Draws n samples and their log densities in one forward solve.

        Returns:
            theta: (n, d) and log_prob: (n,), or (n, b, d) and (n, b) for a batch.
        """
        return self._sample(n, x, True, reject_outside_prior, show_progress, solver_options)

    def log_prob(
        self, theta: Tensor, x: Tensor, *, show_progress: bool = False, **solver_options
    ) -> Tensor:
        """Exact log q(θ | x), by solving the ODE backwards with the divergence of v.

        A point's value does not depend on the other points evaluated with it. Points outside
        the prior's support get -inf.

        Args:
            theta: (n, d) for one observation x (*x_shape), or (n, b, d) for a batch
                x (b, *x_shape).

        Returns:
            log_prob: (n,) or (n, b)
        """
        x, batched = self._observations(x)
        theta = as_float_tensor(theta, "theta")
        if batched:
            check_shape(theta, (None, len(x), self.theta_dim), "theta (for a batch of x)")
        else:
            check_shape(theta, (None, self.theta_dim), "theta")
            theta = theta.unsqueeze(1)
        check_device(theta, self.device, "theta")
        theta = theta.to(self.dtype)
        settings = self._settings(solver_options)
        embedded = self._embed(x)
        chunk = max(1, self.chunk_size // self.theta_dim)
        columns = []
        with tqdm(
            total=theta.shape[0] * len(x), desc="log_prob", disable=not show_progress, leave=False
        ) as progress:
            for j, e in enumerate(embedded):
                pieces = []
                for start in range(0, theta.shape[0], chunk):
                    pieces.append(self._log_prob_rows(theta[start : start + chunk, j], e, settings))
                    progress.update(len(pieces[-1]))
                columns.append(torch.cat(pieces) if pieces else theta.new_zeros(0))
        log_prob = torch.stack(columns, dim=1)
        return log_prob if batched else log_prob[:, 0]

    def _inside(self, theta: Tensor) -> Tensor:
        """theta: (n, d) -> (n,) bool: inside the prior's support and strictly inside the
        bounds of `theta_transform` (where float rounding can put a sample on a bound)."""
        inside = self.theta_transform.inside(theta)
        if self.prior is not None:
            inside &= within_support(self.prior, theta)
        return inside

    def _log_prob_rows(self, theta: Tensor, embedded_x: Tensor, settings: SolverSettings) -> Tensor:
        """theta: (m, d), embedded_x: (k,) -> (m,)"""
        inside = self._inside(theta)
        # Points outside get -inf; a finite stand-in keeps them out of the solver's error control.
        u = torch.where(inside.unsqueeze(-1), self.theta_transform(theta), 0.0)
        solution = self._solve(
            self._field(embedded_x.unsqueeze(0)),
            self.theta_standardizer(u),
            1.0,
            0.0,
            settings,
            track_log_density=True,
        )
        log_prob = (
            standard_normal_log_prob(solution.theta)
            - solution.log_density_change
            + self.theta_standardizer.log_abs_det_jacobian()
            + self.theta_transform.log_abs_det_jacobian(u)
        )
        return torch.where(inside, log_prob, -math.inf)

    def save(self, path) -> None:
        """Writes the posterior to one safetensors file (weights, and JSON configuration)."""
        from fmpe.serialization import save_posterior

        save_posterior(self, path)
