"""slcp_distractors with its distractor noise loaded once and drawn one component per row.

sbibm unpickles its 20-component Student-t mixture on every call and draws every component
for every row, which needs ~0.7 GB and ~1.5 s per 1000 simulations; here the mixture's
tensors are kept and each row draws only its own component. The distribution is the same.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch
from torch import Tensor
from torch.distributions import Chi2

from fmpe.tasks.sbibm import SbibmTask, default_validation
from fmpe.tasks.shipped import sbibm_files


def _pickled_distributions() -> AbstractContextManager[None]:
    """Allow ``torch.load`` to unpickle the mixture's pyro classes, only inside this context.

    torch >= 2.6 loads weights-only by default and refuses them; older torch has no such
    context manager and loads them anyway.
    """
    safe_globals = getattr(torch.serialization, "safe_globals", None)
    if safe_globals is None:
        return nullcontext()
    import pyro.distributions as pdist

    classes = [pdist.MixtureSameFamily, pdist.Categorical, pdist.Independent]
    return safe_globals([*classes, pdist.MultivariateStudentT, pdist.Chi2])


class SlcpDistractors(SbibmTask):
    """slcp's 8 values and 92 distractors, permuted: ``theta: (n, 5)`` -> ``x: (n, 100)``."""

    def __init__(self) -> None:
        super().__init__("slcp_distractors")
        import sbibm

        with default_validation(False):
            self._informative = sbibm.get_task("slcp").get_simulator()
        files = sbibm_files("slcp")
        with _pickled_distributions():
            mixture = torch.load(files / "gmm.torch")
        student = mixture.component_distribution.base_dist
        self._weights = mixture.mixture_distribution.probs
        self._df, self._loc, self._scale_tril = student.df, student.loc, student.scale_tril
        self._permutation = torch.load(files / "permutation_idx.torch")

    def distractors(self, n: int) -> Tensor:
        """``(n, 92)`` float64 draws from the Student-t mixture."""
        component = torch.multinomial(self._weights, n, replacement=True)
        noise = torch.empty(n, self._loc.shape[1], dtype=self._loc.dtype)
        for k in component.unique().tolist():
            rows = (component == k).nonzero().squeeze(1)
            z = torch.randn(len(rows), self._loc.shape[1], dtype=self._loc.dtype)
            z = z * (self._df[k] / Chi2(self._df[k]).sample((len(rows),))).sqrt()[:, None]
            noise.index_copy_(0, rows, self._loc[k] + z @ self._scale_tril[k].T)
        return noise

    def _simulate(self, theta: Tensor) -> Tensor:
        with default_validation(False):
            informative = self._informative(theta.to(torch.float32))
        x = torch.cat([informative, self.distractors(len(theta)).float()], dim=1)
        return x.index_select(1, self._permutation)
