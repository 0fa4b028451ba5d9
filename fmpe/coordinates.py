"""The coordinates a posterior's flow works in: z = (T(θ) − μ) / σ, T the map of the prior's
bounds onto R (`fmpe.unbounded`) and (μ, σ) the z-scoring fitted on the training split.

    coordinates = ThetaCoordinates(transform, standardizer)
    z = coordinates.to_z(theta)                        # (n, d) -> (n, d)
    theta = coordinates.from_z(z)
    log_q_theta = log_q_z + coordinates.log_abs_det_jacobian(z)
"""

from dataclasses import dataclass

from torch import Tensor

from fmpe.standardize import Standardizer
from fmpe.unbounded import UnboundedTransform


@dataclass(frozen=True)
class ThetaCoordinates:
    """θ ↔ z, with the density correction between them. Holds its two maps by reference, so
    that it follows them to another device or dtype."""

    transform: UnboundedTransform
    standardizer: Standardizer

    def to_z(self, theta: Tensor) -> Tensor:
        """theta: (n, d) -> z: (n, d); not finite for θ on or outside the prior's bounds."""
        return self.standardizer(self.transform(theta))

    def from_z(self, z: Tensor) -> Tensor:
        """z: (n, d) -> theta: (n, d), inside the prior's bounds."""
        return self.transform.inverse(self.standardizer.inverse(z))

    def log_abs_det_jacobian(self, z: Tensor) -> Tensor:
        """log |det dz/dθ| at θ = from_z(z), so that log q(θ) = log q(z) + this: (n, d) -> (n,)"""
        u = self.standardizer.inverse(z)
        return self.standardizer.log_abs_det_jacobian() + self.transform.log_abs_det_jacobian(u)
