"""bernoulli_glm and bernoulli_glm_raw with a whole batch simulated at once.

sbibm simulates one row at a time in Python (about 0.1 ms per row on one thread, far slower
when torch's threads compete for cores). Here all rows run together and draw the same
uniforms in the same order, so a seeded batch gives sbibm's spikes.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn.functional import conv1d

from fmpe.tasks.sbibm import SbibmTask
from fmpe.tasks.shipped import sbibm_files


class BernoulliGLM(SbibmTask):
    """Logistic GLM spiking in 100 bins driven by a fixed white-noise stimulus.

    ``theta: (n, 10)`` (offset, then a 9-tap filter) -> ``x: (n, 10)`` (spike count and 9
    spike-triggered averages) for ``bernoulli_glm``, or ``x: (n, 100)`` raw spikes for
    ``bernoulli_glm_raw``.
    """

    def __init__(self, name: str) -> None:
        super().__init__(name)
        files = sbibm_files("bernoulli_glm")
        self._design = torch.load(files / "design_matrix.pt")  # (100, 10)
        self._stimulus = torch.load(files / "stimulus_I.pt")  # (100,)
        self._raw = name == "bernoulli_glm_raw"

    def _simulate(self, theta: Tensor) -> Tensor:
        psi = theta.to(torch.float32) @ self._design.T
        # Written as in sbibm rather than torch.sigmoid, so that the same uniforms give the
        # same spikes.
        rate = 1 / (1 + torch.exp(-psi))
        spikes = (torch.rand(psi.shape) < rate).float()
        if self._raw:
            return spikes
        sta = conv1d(spikes[:, None], self._stimulus.reshape(1, 1, -1), padding=8)[:, 0, -9:]
        return torch.cat([spikes.sum(dim=1, keepdim=True), sta], dim=1)
