"""Priors whose log density is -inf outside the support instead of raising or giving NaN."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import Distribution, Independent, transform_to


class MaskedIndependent(Independent):
    """`Independent` whose ``log_prob`` is ``-inf`` outside ``support``.

    The wrapped distribution is only evaluated inside its support, so argument validation
    never raises and, e.g., a log-normal never returns NaN for a negative value. Being an
    `Independent`, it is stored by fmpe's prior serialization like any other.
    """

    def log_prob(self, value: Tensor) -> Tensor:
        """``value: (..., *event_shape)`` -> ``(...)``."""
        inside = self.support.check(value)
        # Out-of-support entries are swapped for an interior point before evaluating.
        interior = transform_to(self.support)(torch.zeros(self.event_shape))
        mask = inside.reshape(inside.shape + (1,) * len(self.event_shape))
        safe = torch.where(mask, value, interior.to(value.dtype))
        return torch.where(inside, super().log_prob(safe), -torch.inf)


def masked(prior: Distribution) -> MaskedIndependent:
    """``prior`` as a `MaskedIndependent` with the same samples, support and density."""
    if isinstance(prior, Independent):
        return MaskedIndependent(prior.base_dist, prior.reinterpreted_batch_ndims)
    return MaskedIndependent(prior, 0)
