"""The posterior of FMPE: samples and exact log densities by solving the flow's ODE."""

from dataclasses import replace

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from fmpe.coordinates import ThetaCoordinates
from fmpe.ode import SolverSettings, sampling_overrides, solve, standard_normal_log_prob
from fmpe.posteriors.base import Posterior
from fmpe.posteriors.composition import sample_iid
from fmpe.standardize import Standardizer

MAP_SOLVER = SolverSettings(method="rk4", steps=20)  # the density that `map` climbs


class FlowMatchingPosterior(Posterior):
    """q(θ | x) defined by a velocity network trained with flow matching.

    Sampling integrates dz/dt = v(t, z, x) from t = 0 (z ~ N(0, I)) to 1; the log density
    integrates the divergence of v along the way (`fmpe.ode.solve`).

    Args:
        network: the velocity network; with ``embed`` and ``forward_embedded`` a solve embeds
            each observation once.
        solver: the default ODE settings; every method accepts others as keywords.
        The other arguments are those of `Posterior`.
    """

    kind = "fmpe"

    def __init__(
        self,
        network: nn.Module,
        theta_coordinates: ThetaCoordinates,
        x_standardizer: Standardizer,
        prior: Distribution | None = None,
        solver: SolverSettings | None = None,
        chunk_size: int = 10_000,
    ):
        super().__init__(theta_coordinates, x_standardizer, prior, chunk_size)
        self.network = network.eval()
        self.solver = solver or SolverSettings()
        self._embeds = hasattr(network, "forward_embedded")

    def _file_options(self) -> dict:
        return {"solver": self.solver.to_dict()}

    @classmethod
    def _init_options(cls, file_options: dict) -> dict:
        saved = file_options["solver"]
        solver = SolverSettings(**saved)
        # Files saved before fmpe 0.6 have no sample_* solve settings: they sampled with their
        # method, steps and time grid, and go on doing so.
        return {"solver": solver if "sample_method" in saved else solver.sampling_like_densities()}

    def _settings(self, overrides: dict) -> SolverSettings:
        return replace(self.solver, **overrides) if overrides else self.solver

    def _sampling_settings(self, options: dict, with_log_prob: bool) -> SolverSettings:
        """A sampling solve's settings: the density's with the log density, else the sample_*
        ones, which `options` name as `sample` takes them (`sampling_overrides`)."""
        if with_log_prob:
            return self._settings(options)
        return self._settings(sampling_overrides(options)).for_sampling()

    def _context(self, x_z: Tensor) -> Tensor:
        return self.network.embed(x_z) if self._embeds else x_z

    def _velocity(self, t: Tensor, z: Tensor, context: Tensor) -> Tensor:
        """v(t, z, context): t a scalar tensor or (b,), z (b, d), context (b, ...) -> (b, d)."""
        t = t.to(z.dtype).expand(len(z)) if t.dim() == 0 else t.to(z.dtype)
        if self._embeds:
            return self.network.forward_embedded(t, z, context)
        return self.network(t, z, context)

    def _sample_z(
        self, context: Tensor, with_log_prob: bool, options: dict
    ) -> tuple[Tensor, Tensor | None, int]:
        z0 = torch.randn(len(context), self.theta_dim, device=self.device, dtype=self.dtype)
        solution = solve(
            self._velocity,
            z0,
            0.0,
            1.0,
            self._sampling_settings(options, with_log_prob),
            condition=context,
            track_log_density=with_log_prob,
        )
        if not with_log_prob:
            return solution.theta, None, solution.evaluations
        log_q = standard_normal_log_prob(z0) + solution.log_density_change
        return solution.theta, log_q, solution.evaluations

    def _log_prob_z(self, z: Tensor, context: Tensor, options: dict) -> tuple[Tensor, int]:
        settings = self._settings(options)
        solution = solve(
            self._velocity, z, 1.0, 0.0, settings, condition=context, track_log_density=True
        )
        log_q = standard_normal_log_prob(solution.theta) - solution.log_density_change
        return log_q, solution.evaluations

    def _differentiable_log_prob_z(self, z: Tensor, context: Tensor) -> Tensor:
        # A fixed-step RK4 through which gradients flow: the mode of its density is the mode
        # of the exact one up to the solve's error, at a fixed, small cost per gradient.
        solution = solve(
            self._velocity,
            z,
            1.0,
            0.0,
            MAP_SOLVER,
            condition=context,
            track_log_density=True,
            differentiable=True,
        )
        return standard_normal_log_prob(solution.theta) - solution.log_density_change

    def sample_iid(
        self,
        n: int,
        trials: Tensor,
        *,
        iid_method: str = "auto_gauss",
        prior: Distribution | None = None,
        sigma_min: float = 1e-4,
        iid_options: dict | None = None,
        show_progress: bool = False,
        **solver_options,
    ) -> Tensor:
        """Draws n samples of θ given iid `trials`, composing this posterior of one trial
        (score composition with the Gaussian correction, `fmpe.posteriors.composition`).

        Args:
            trials: (m, *x_shape), m iid trials of one θ (or one trial, *x_shape).
            iid_method: a name in `IID_METHODS`: "auto_gauss" (each trial's posterior precision
                from 1000 of its samples) or "gauss" (twice the prior's precision, no solves).
            prior: the prior; default this posterior's.
            sigma_min: the training path's width at t = 1 (FMPE's default).
            iid_options: keywords of the iid method, e.g. {"samples": 4000}.
            show_progress: a progress bar over the samples.

        Returns:
            θ (n, d), inside the prior's support.
        """
        return sample_iid(
            self,
            n,
            trials,
            iid_method=iid_method,
            prior=prior,
            sigma_min=sigma_min,
            iid_options=iid_options,
            show_progress=show_progress,
            **solver_options,
        )

    @property
    def _log_prob_rows(self) -> int:
        # The exact divergence costs one backward pass per dimension.
        return max(1, self.chunk_size // self.theta_dim)
