"""The posterior given n iid trials, composed at sampling time from a posterior trained on one
trial (score composition: Geffner et al. 2023; its Gaussian correction: Linhart et al. 2024).

p(θ | x_1..x_n) ∝ p(θ)^(1 − n) ∏_j p(θ | x_j). Along the flow's path z_t = t·θ + s_t·ε, with
s_t = 1 − (1 − σ_min)·t, every velocity is the same affine function of its score,
v = (z + s_t ∇log p_t(z)) / t, so composing scores is composing velocities:

    v(t, z) = Λ_t⁻¹ [(1 − n) P_λ,t v_λ(t, z) + Σ_j P_j,t v_j(t, z)]
    Λ_t = (1 − n) P_λ,t + Σ_j P_j,t

where v_j is the trained field given x_j, v_λ the prior's, and P_t = P + t²/s_t² I the precision
of p(θ | z_t) for a Gaussian of precision P. This is exact when the prior and every p(θ | x_j)
are Gaussian, and an approximation otherwise. It works in the posterior's standardized
coordinates, where the prior is replaced by the Gaussian of its moments there (exact for a
Gaussian prior); an iid method (`IID_METHODS`) says where each P_j comes from:

    theta = posterior.sample_iid(1000, trials)                  # trials: (n, *x_shape)
    theta = posterior.sample_iid(1000, trials, iid_method="gauss")  # no extra solves

Only samples: the composed flow has a density, but not that of the posterior it stands for.
"""

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import Tensor
from torch.distributions import Distribution

from fmpe.ode import SolverSettings, sampling_overrides, solve
from fmpe.registry import Registry

PRIOR_SAMPLES = 100_000  # prior draws for the prior's moments in standardized coordinates


@dataclass(frozen=True)
class GaussianMoments:
    """A Gaussian N(mean, covariance) in the posterior's standardized coordinates.

    Attributes:
        mean: (d,)
        covariance: (d, d)
    """

    mean: Tensor
    covariance: Tensor

    @classmethod
    def of(cls, z: Tensor) -> "GaussianMoments":
        """The moments of samples z (m, d)."""
        return cls(z.mean(0), torch.atleast_2d(torch.cov(z.T)))

    @property
    def precision(self) -> Tensor:
        """(d, d)"""
        return torch.linalg.inv(self.covariance)


def path_scales(t: Tensor, sigma_min: float) -> tuple[Tensor, Tensor]:
    """The signal and noise scales of z_t = t·θ + s_t·ε: (t, s_t), each shaped like t."""
    return t, 1 - (1 - sigma_min) * t


def gaussian_velocity(t: Tensor, z: Tensor, gaussian: GaussianMoments, sigma_min: float) -> Tensor:
    """The flow-matching velocity field of N(μ, Σ) in closed form:
    v = μ + (tΣ − (1 − σ_min) s_t I)(t²Σ + s_t² I)⁻¹ (z − tμ).

    t: (b,), z: (b, d) -> (b, d)
    """
    signal, noise = path_scales(t, sigma_min)
    eigenvalues, basis = torch.linalg.eigh(gaussian.covariance)
    signal, noise = signal[:, None], noise[:, None]
    gain = (signal * eigenvalues - (1 - sigma_min) * noise) / (signal**2 * eigenvalues + noise**2)
    offset = (z - signal * gaussian.mean) @ basis
    return gaussian.mean + (gain * offset) @ basis.T


def at_least(precisions: Tensor, floor: Tensor) -> Tensor:
    """The precisions (n, d, d) raised where needed to at least `floor` (d, d) in every
    direction (the Loewner order): eigenvalues below 1 of floor^(-1/2) P floor^(-1/2) go to 1."""
    eigenvalues, basis = torch.linalg.eigh(floor)
    root = basis * eigenvalues.sqrt()  # floor = root rootᵀ
    inverse_root = basis / eigenvalues.sqrt()
    whitened_values, whitened_basis = torch.linalg.eigh(inverse_root.T @ precisions @ inverse_root)
    raised = (whitened_basis * whitened_values.clamp(min=1).unsqueeze(-2)) @ whitened_basis.mT
    return root @ raised @ root.T


@dataclass(frozen=True)
class CompositionWeights:
    """What the composed velocity's weights need of the precisions, computed once per solve:
    the prior's precision P_λ (d, d), the trials' P_j raised to at least it (n, d, d), and the
    eigendecomposition of Λ_0 = (1 − n) P_λ + Σ_j P_j, eigenvalues (d,) and basis (d, d)."""

    prior_precision: Tensor
    trial_precisions: Tensor
    eigenvalues: Tensor
    basis: Tensor

    @classmethod
    def of(cls, prior_precision: Tensor, trial_precisions: Tensor) -> "CompositionWeights":
        """A trial's precision is first raised to at least the prior's, as it is for any
        Gaussian model: then Λ_t ⪰ every P_j,t, so each trial's weight has eigenvalues in
        [0, 1] and the prior's in [1 − n, 0], however wrong an estimate."""
        n = len(trial_precisions)
        raised = at_least(trial_precisions, prior_precision)
        eigenvalues, basis = torch.linalg.eigh((1 - n) * prior_precision + raised.sum(0))
        return cls(prior_precision, raised, eigenvalues, basis)


def compose_velocities(
    t: Tensor,
    prior_velocity: Tensor,
    trial_velocities: Tensor,
    weights: CompositionWeights,
    sigma_min: float,
) -> Tensor:
    """The velocity of p(θ)^(1 − n) ∏_j p(θ | x_j), weighted by the denoising precisions (see
    the module docstring and `CompositionWeights`).

    t: (b,), prior_velocity: (b, d), trial_velocities: (b, n, d) -> (b, d)
    """
    n = trial_velocities.shape[1]
    signal, noise = path_scales(t, sigma_min)
    path_precision = (signal / noise).pow(2)[:, None]  # t² / s_t², added to every P
    weighted = (1 - n) * prior_velocity @ weights.prior_precision + torch.einsum(
        "bjd,jde->be", trial_velocities, weights.trial_precisions
    )
    unweighted = (1 - n) * prior_velocity + trial_velocities.sum(1)
    numerator = weighted + path_precision * unweighted
    basis = weights.basis
    return ((numerator @ basis) / (weights.eigenvalues + path_precision)) @ basis.T


PrecisionMethod = Callable[..., Tensor]
"""Called with the posterior, the context (n, ...), the prior's `GaussianMoments` and an
options dict; returns (n, d, d), the precision of each p(θ | x_j) in the posterior's
standardized coordinates."""

IID_METHODS: Registry[PrecisionMethod] = Registry("iid method", "fmpe.posteriors.IID_METHODS")
"""How each single-trial posterior's precision P_j is estimated, by name."""


@IID_METHODS.register("auto_gauss")
def sampled_precisions(
    posterior, context: Tensor, prior: GaussianMoments, options: dict, samples: int = 1000
) -> Tensor:
    """P_j from the covariance of `samples` draws of q(θ | x_j), solved for as many j at once
    as the posterior's `chunk_size` allows. Every
    trial's draws start from the same base points, so that the estimates, and the composed
    posterior, do not depend on the order of the trials."""
    del prior
    z0 = torch.randn(samples, posterior.theta_dim, device=posterior.device, dtype=posterior.dtype)
    settings = composition_settings(posterior, options)
    trials_per_solve = max(1, posterior.chunk_size // samples)
    covariances = []
    for part in context.split(trials_per_solve):  # at most chunk_size rows a solve
        z = solve(
            posterior._velocity,
            z0.repeat(len(part), 1),
            0.0,
            1.0,
            settings,
            condition=part.repeat_interleave(samples, 0),
        ).theta
        centred = z.view(len(part), samples, -1)
        centred = centred - centred.mean(1, keepdim=True)
        covariances.append(centred.mT @ centred / (samples - 1))
    return torch.linalg.inv(torch.cat(covariances))


@IID_METHODS.register("gauss")
def scaled_prior_precisions(
    posterior, context: Tensor, prior: GaussianMoments, options: dict, scale: float = 2.0
) -> Tensor:
    """P_j = `scale` × the prior's precision for every j: no solves, a guess that each trial
    narrows the prior by about √scale."""
    del posterior, options
    return (scale * prior.precision).expand(len(context), -1, -1)


def standardized_prior(posterior, prior: Distribution, num_samples: int = PRIOR_SAMPLES):
    """The moments of `prior` in the posterior's standardized coordinates z."""
    with torch.no_grad():
        theta = prior.sample((num_samples,)).to(posterior.device, posterior.dtype)
        theta = theta[posterior._inside(theta, prior)]
        z = posterior.theta_coordinates.to_z(theta)
    moments = GaussianMoments.of(z.double())
    return GaussianMoments(moments.mean.to(z.dtype), moments.covariance.to(z.dtype))


def composed_field(
    posterior,
    context: Tensor,
    prior: GaussianMoments,
    precisions: Tensor,
    sigma_min: float,
):
    """The velocity field of the composed posterior given the n trials' `context` (n, ...);
    every particle is conditioned on all n trials, so it takes no condition of its own."""
    n = len(context)
    weights = CompositionWeights.of(prior.precision, precisions)

    def velocity(t: Tensor, z: Tensor, condition: None) -> Tensor:
        t = t.to(z.dtype).expand(len(z)) if t.dim() == 0 else t.to(z.dtype)
        trials = context[torch.arange(n, device=z.device).repeat(len(z))]
        trial_velocities = posterior._velocity(
            t.repeat_interleave(n), z.repeat_interleave(n, 0), trials
        )
        return compose_velocities(
            t,
            gaussian_velocity(t, z, prior, sigma_min),
            trial_velocities.view(len(z), n, -1),
            weights,
            sigma_min,
        )

    return velocity


def composition_settings(posterior, solver_options: dict) -> SolverSettings:
    """The composition's sampling solves: the posterior's ``sample_*`` settings with the density
    solves' method, steps and time grid (adaptive by default), then `solver_options` as
    `sample` takes them. The fixed-step sampling default was measured on trained fields only,
    and the composed field sharpens as trials are added."""
    adaptive = posterior.solver.sampling_like_densities()
    return replace(adaptive, **sampling_overrides(solver_options)).for_sampling()


def sample_iid(
    posterior,
    num_samples: int,
    trials: Tensor,
    *,
    iid_method: str = "auto_gauss",
    prior: Distribution | None = None,
    sigma_min: float = 1e-4,
    iid_options: dict | None = None,
    show_progress: bool = False,
    **solver_options,
) -> Tensor:
    """Samples the composed posterior of θ given iid `trials`, for `posterior` trained on one
    trial each (a `FlowMatchingPosterior`); see `FlowMatchingPosterior.sample_iid`."""
    prior = prior if prior is not None else posterior.prior
    if prior is None:
        raise ValueError("composing trials needs the prior: pass prior=, or train with one")
    precision_method = IID_METHODS.get(iid_method)
    trials, _ = posterior._observations(trials)
    context = posterior._embed(trials)
    settings = composition_settings(posterior, solver_options)
    moments = standardized_prior(posterior, prior)
    with torch.no_grad():
        precisions = precision_method(
            posterior, context, moments, solver_options, **(iid_options or {})
        )
    field = composed_field(posterior, context, moments, precisions, sigma_min)

    def draw(rows: Tensor) -> tuple[Tensor, None, int]:
        z0 = torch.randn(
            len(rows), posterior.theta_dim, device=posterior.device, dtype=posterior.dtype
        )
        solution = solve(field, z0, 0.0, 1.0, settings)
        theta, _ = posterior._from_z(solution.theta, None)
        return theta, None, solution.evaluations

    theta, _, _ = posterior._accepted(
        num_samples,
        1,
        draw,
        with_log_prob=False,
        reject_outside_prior=True,
        show_progress=show_progress,
        draws_per_call=max(1, posterior.chunk_size // len(context)),  # n trials per draw
        prior=prior,
    )
    return theta[:, 0]
