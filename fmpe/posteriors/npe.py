"""The posterior of NPE: a conditional normalizing flow, sampled and evaluated in one pass."""

from torch import Tensor, nn
from torch.distributions import Distribution

from fmpe.coordinates import ThetaCoordinates
from fmpe.posteriors.base import Posterior
from fmpe.standardize import Standardizer


class NPEPosterior(Posterior):
    """q(θ | x) of a conditional density network (`fmpe.networks.flows.ConditionalFlow`, or
    any module with ``forward(x) -> distribution``, optionally ``embed`` and ``distribution``).

    Its methods take no solver options. Arguments as for `Posterior`.
    """

    kind = "npe"

    def __init__(
        self,
        network: nn.Module,
        theta_coordinates: ThetaCoordinates,
        x_standardizer: Standardizer,
        prior: Distribution | None = None,
        chunk_size: int = 10_000,
    ):
        super().__init__(theta_coordinates, x_standardizer, prior, chunk_size)
        self.network = network.eval()
        self._has_distribution = hasattr(network, "distribution")

    def _distribution(self, context: Tensor, options: dict) -> Distribution:
        if options:
            raise ValueError(
                f"an NPE posterior takes no solver options, got {', '.join(sorted(options))}"
            )
        if self._has_distribution:
            return self.network.distribution(context)
        return self.network(context)

    def _context(self, x_z: Tensor) -> Tensor:
        return self.network.embed(x_z) if self._has_distribution else x_z

    def _sample_z(
        self, context: Tensor, with_log_prob: bool, options: dict
    ) -> tuple[Tensor, Tensor | None, int]:
        distribution = self._distribution(context, options)
        if with_log_prob:
            z, log_q = distribution.rsample_and_log_prob()
            return z, log_q, 1
        return distribution.sample(), None, 1

    def _log_prob_z(self, z: Tensor, context: Tensor, options: dict) -> tuple[Tensor, int]:
        return self._distribution(context, options).log_prob(z), 1

    def _differentiable_log_prob_z(self, z: Tensor, context: Tensor) -> Tensor:
        return self._distribution(context, {}).log_prob(z)
