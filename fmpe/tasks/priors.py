"""Priors whose log density is -inf outside the support instead of raising or giving NaN."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import Distribution, Independent, transform_to

from fmpe.unbounded import support_bounds


class MaskedIndependent(Independent):
    """`Independent` whose ``log_prob`` is ``-inf`` outside the interior of ``support``.

    The wrapped distribution is only evaluated inside its support, so argument validation
    never raises and, e.g., a log-normal never returns NaN for a negative value. A point on a
    bound gets ``-inf`` (torch's Uniform gives its lower bound a finite density and its upper
    bound none); fmpe's posteriors follow the same convention. Being an `Independent`, it is
    stored by fmpe's prior serialization like any other.
    """

    def log_prob(self, value: Tensor) -> Tensor:
        """``value: (..., *event_shape)`` -> ``(...)``."""
        inside = self.support.check(value)
        if len(self.event_shape) == 1:
            low, high = support_bounds(self, self.event_shape[0])
            strictly = (value > low.to(value.dtype)) & (value < high.to(value.dtype))
            inside = inside & strictly.all(-1)
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
