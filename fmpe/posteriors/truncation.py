"""The prior truncated to a posterior's highest-density region: the proposal of truncated
sequential rounds (TSNPE, Deistler et al. 2022).

A round's simulations come from the prior restricted to {θ : log q(θ | x_o) ≥ τ}, where τ is
the ε-quantile of log q over samples of q(θ | x_o): the region holds 1 − ε of q's mass. The
proposal is the prior times an indicator, so training on every round's simulations with the
plain loss still estimates the posterior inside that region. It needs q's exact density,
which FMPE's posterior has.

    threshold = hpd_threshold(posterior, x_obs, epsilon=1e-4)
    proposal = TruncatedPrior(prior, posterior, x_obs, threshold)
    theta = proposal.sample((1000,))                      # by rejection from the prior
"""

import torch
from torch import Tensor
from torch.distributions import Distribution

from fmpe.checks import as_count


def hpd_threshold(posterior, x_obs: Tensor, epsilon: float, num_samples: int = 10_000) -> float:
    """τ such that {θ : log q(θ | x_obs) ≥ τ} holds 1 − `epsilon` of q's mass, estimated from
    `num_samples` samples of q."""
    if not 0 < epsilon < 1:
        raise ValueError(f"epsilon must be in (0, 1), got {epsilon}")
    _, log_prob = posterior.sample_and_log_prob(num_samples, x_obs.to(posterior.device))
    return torch.quantile(log_prob.double().cpu(), epsilon).item()


class TruncatedPrior:
    """The prior restricted to {θ : log q(θ | x_obs) ≥ threshold}, sampled by rejection in
    batches of `batch_size` prior draws; `acceptance_rate` is the share accepted so far.

    Args:
        max_draws: prior draws after which sampling gives up, naming the acceptance rate.
    """

    def __init__(
        self,
        prior: Distribution,
        posterior,
        x_obs: Tensor,
        threshold: float,
        batch_size: int = 10_000,
        max_draws: int = 10_000_000,
    ):
        self.prior, self.posterior, self.x_obs = prior, posterior, x_obs
        self.threshold, self.batch_size, self.max_draws = threshold, batch_size, max_draws
        self.draws = self.accepted = 0

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / max(self.draws, 1)

    def inside(self, theta: Tensor) -> Tensor:
        """(n,) whether each θ (n, d) lies in the region."""
        device = self.posterior.device
        log_prob = self.posterior.log_prob(theta.to(device), self.x_obs.to(device))
        return (log_prob >= self.threshold).cpu()

    def sample(self, shape: torch.Size | tuple[int, ...] = ()) -> Tensor:
        """θ of shape (*shape, d) from the truncated prior."""
        wanted = as_count(int(torch.Size(shape).numel()), "the number of samples", minimum=1)
        kept, count = [], 0
        while count < wanted:
            if self.draws >= self.max_draws:
                raise RuntimeError(
                    f"only {count} of {wanted} prior draws fell in the posterior's region after "
                    f"{self.draws} tries (acceptance {self.acceptance_rate:.2e}); raise epsilon"
                )
            theta = self.prior.sample((self.batch_size,))
            inside = theta[self.inside(theta)]
            self.draws += len(theta)
            self.accepted += len(inside)
            kept.append(inside)
            count += len(inside)
        return torch.cat(kept)[:wanted].reshape(*shape, -1)
