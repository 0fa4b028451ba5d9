"""Sample-based metrics of the sbibm benchmark: C2ST, MMD² and the true parameter's log-probability.

`c2st` reproduces the benchmark's classifier two-sample test (sklearn's ``MLPClassifier`` under
5-fold cross-validation) in torch, training the classifiers of all folds at once as one batched
network.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

ArrayLike = Tensor | np.ndarray

# sklearn's MLPClassifier defaults, which the benchmark's C2ST relies on, and its max_iter.
_BATCH_SIZE = 200
_LEARNING_RATE = 1e-3
_BETA1, _BETA2, _ADAM_EPS = 0.9, 0.999, 1e-8
_L2_ALPHA = 1e-4
_TOL = 1e-4
_PATIENCE = 10
_MAX_EPOCHS = 10_000
# sklearn reports log-loss with probabilities clipped to [eps, 1 - eps] of float32, the data's type.
_MAX_LOG_LOSS = -math.log(torch.finfo(torch.float32).eps)
_MIN_LOG_LOSS = -math.log1p(-torch.finfo(torch.float32).eps)

_MEDIAN_BINS = 1024


def c2st(
    reference: ArrayLike,
    samples: ArrayLike,
    *,
    seed: int = 1,
    folds: int = 5,
    device: str | torch.device | None = None,
) -> float:
    """Classifier two-sample test accuracy as defined by the sbibm benchmark.

    Both sets are z-scored with the reference's mean and std; an MLP (ReLU, two hidden layers of
    width 10·d) trained like sklearn's ``MLPClassifier`` with adam and no early stopping tells
    them apart under shuffled k-fold cross-validation (folds as sklearn's
    ``KFold(folds, shuffle=True, random_state=seed)``). 0.5 means indistinguishable, 1.0 fully
    separable.

    Args:
        reference: (n, d) reference posterior samples.
        samples: (m, d) samples to assess.
        seed: seed of the fold assignment, initialisation and shuffling.
        folds: number of cross-validation folds.
        device: where to train; None picks CUDA when available, else CPU.

    Returns:
        Mean held-out accuracy over the folds.
    """
    x, y = _sample_pair(reference, samples, ("reference", "samples"), torch.float32)
    if folds < 2 or folds > len(x) + len(y):
        raise ValueError(f"folds must be between 2 and n + m = {len(x) + len(y)}; got {folds}")
    device = _resolve_device(device)
    data = _z_score(x, y).to(device)
    labels = torch.cat([torch.zeros(len(x)), torch.ones(len(y))]).to(device)
    generator = torch.Generator(device).manual_seed(seed)

    test_sets = _kfold_test_sets(len(data), folds, seed)
    train_sets = [np.setdiff1d(np.arange(len(data)), test) for test in test_sets]
    width = 10 * x.shape[1]
    net = _BatchedMLP([x.shape[1], width, width, 1], folds, generator, device)
    with _single_thread_on_cpu(device):
        _train(net, data, labels, _Padded(train_sets, device), generator)
    return _accuracy(net, data, labels, _Padded(test_sets, device)).mean().item()


def fit_classifiers(
    inputs: Tensor, labels: Tensor, *, seed: int = 1, device: str | torch.device | None = None
) -> Callable[[Tensor], Tensor]:
    """k classifiers trained at once by `c2st`'s recipe (sklearn's ``MLPClassifier``: two ReLU
    layers of width 10·d, Adam, its stopping rule), one per training set.

    Args:
        inputs: (k, n, d) each classifier's training points, already z-scored.
        labels: (k, n) their labels in {0, 1}.

    Returns:
        a function from points (m, d) to each classifier's probability of label 1, (k, m).
    """
    k, n, d = inputs.shape
    device = _resolve_device(device)
    generator = torch.Generator(device).manual_seed(seed)
    net = _BatchedMLP([d, 10 * d, 10 * d, 1], k, generator, device)
    blocks = [np.arange(j * n, (j + 1) * n) for j in range(k)]
    data, targets = inputs.reshape(k * n, d).to(device), labels.reshape(k * n).float().to(device)
    with _single_thread_on_cpu(device):
        _train(net, data, targets, _Padded(blocks, device), generator)

    def probabilities(points: Tensor) -> Tensor:
        return torch.sigmoid(net.forward(points.to(device).expand(k, -1, -1))[1])

    return probabilities


def mmd(x: ArrayLike, y: ArrayLike, *, chunk_size: int = 1024) -> float:
    """Unbiased MMD² with a Gaussian kernel, as sbibm's ``mmd`` metric computes it.

    The kernel is k(a, b) = exp(-|a - b|² / (2σ²)) with σ the median pairwise distance within
    ``x``; no z-scoring. Kernel matrices are summed ``chunk_size`` rows at a time so memory stays
    at O(chunk_size · (n + m)).

    Args:
        x: (n, d) first sample set, n ≥ 2 (e.g. the reference).
        y: (m, d) second sample set, m ≥ 2.
        chunk_size: rows of a kernel matrix held in memory at once.

    Returns:
        The unbiased estimate of MMD²; it can be slightly negative.
    """
    x, y = _sample_pair(x, y, ("x", "y"), torch.float32)
    if len(x) < 2 or len(y) < 2:
        raise ValueError(f"mmd needs at least 2 samples per set; got {len(x)} and {len(y)}")
    # Distances come from inner products, which lose precision far from the origin.
    center = x.mean(0)
    x, y = x - center, y - center
    sigma2 = _median_pairwise_squared_distance(x, chunk_size)
    if sigma2 == 0:
        raise ValueError("the median distance within x is 0, so the kernel bandwidth is undefined")
    n, m = len(x), len(y)
    # k(a, a) = 1, so removing the diagonal from the within-set sums subtracts n (or m).
    within_x = (_kernel_sum(x, x, sigma2, chunk_size) - n) / (n * (n - 1))
    within_y = (_kernel_sum(y, y, sigma2, chunk_size) - m) / (m * (m - 1))
    between = _kernel_sum(x, y, sigma2, chunk_size) / (n * m)
    return within_x + within_y - 2 * between


def negative_log_prob(log_prob: Callable[[Tensor], Tensor], theta_true: ArrayLike) -> float:
    """Negative log-probability −log q(θ_true) that a posterior estimate gives the true parameter.

    Args:
        log_prob: maps parameters (b, d) to their log-densities (b,).
        theta_true: (d,) the parameter that generated the observation; arrays become float32.
    """
    theta = theta_true if isinstance(theta_true, Tensor) else torch.as_tensor(theta_true).float()
    if theta.ndim != 1:
        raise ValueError(f"theta_true must have shape (d,); got {tuple(theta.shape)}")
    return -log_prob(theta.unsqueeze(0)).detach().reshape(()).item()


def _sample_pair(
    a: ArrayLike, b: ArrayLike, names: tuple[str, str], dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """Validated (n, d) and (m, d) tensors of ``dtype`` on the CPU."""
    a, b = (torch.as_tensor(t).detach().to("cpu", dtype) for t in (a, b))
    for name, t in zip(names, (a, b)):
        if t.ndim != 2:
            raise ValueError(f"{name} must have shape (num_samples, d); got {tuple(t.shape)}")
        if not torch.isfinite(t).all():
            raise ValueError(f"{name} contains NaN or infinite values")
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"{names[1]} must have shape (m, {a.shape[1]}) to match {names[0]} of shape "
            f"{tuple(a.shape)}; got {tuple(b.shape)}"
        )
    return a, b


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@contextmanager
def _single_thread_on_cpu(device: torch.device) -> Iterator[None]:
    """Run torch single-threaded on the CPU for the duration of the block.

    Training takes thousands of steps on tiny tensors; there, waiting for a second intra-op
    thread costs more than it saves, and on a busy machine it slows each step by orders of
    magnitude.
    """
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _z_score(reference: Tensor, samples: Tensor) -> Tensor:
    """Both sets stacked, (n + m, d), standardised with the reference's mean and std."""
    mean, std = reference.mean(0), reference.std(0)
    if (std == 0).any():
        raise ValueError("reference has a constant coordinate; it cannot be z-scored")
    return (torch.cat([reference, samples]) - mean) / std


def _kfold_test_sets(n: int, folds: int, seed: int) -> list[np.ndarray]:
    """Held-out indices of each fold, identical to sklearn's shuffled ``KFold`` with this seed."""
    return np.array_split(np.random.RandomState(seed).permutation(n), folds)


class _Padded:
    """Index sets of unequal lengths as one (k, max_len) tensor padded at the end."""

    def __init__(self, index_sets: list[np.ndarray], device: torch.device):
        self.lengths = torch.tensor([[len(s)] for s in index_sets], device=device)
        self.index = torch.zeros(len(index_sets), int(self.lengths.max()), dtype=torch.long)
        for row, s in zip(self.index, index_sets):
            row[: len(s)] = torch.from_numpy(s)
        self.index = self.index.to(device)

    def valid(self) -> Tensor:
        """(k, max_len) mask of the real (non-padding) positions."""
        return torch.arange(self.index.shape[1], device=self.index.device) < self.lengths

    def shuffled(self, generator: torch.Generator) -> Tensor:
        """(k, max_len) each row's real indices in a random order, padding kept at the end."""
        keys = torch.rand(self.index.shape, generator=generator, device=self.index.device)
        keys = keys.masked_fill(~self.valid(), 2.0)
        return self.index.gather(1, keys.argsort(1))


@dataclass
class _Batch:
    """Positions [start, stop) of a shuffled epoch order and which of them each fold has."""

    start: int
    stop: int
    valid: Tensor  # (k, b) 1.0 at real entries
    count: Tensor  # (k, 1) real entries per fold, at least 1
    present: Tensor  # (k, 1) 1.0 where the fold has any entry


def _batches(train: _Padded, batch_size: int) -> list[_Batch]:
    """The mini-batches of one epoch, as sklearn cuts each fold's training set."""
    valid = train.valid().float()
    batches = []
    for start in range(0, valid.shape[1], batch_size):
        stop = start + batch_size
        count = valid[:, start:stop].sum(1, keepdim=True)
        batches.append(_Batch(start, stop, valid[:, start:stop], count.clamp(min=1), count.sign()))
    return batches


class _BatchedMLP:
    """k independent ReLU MLPs with one logit output, stored as one flat (k, p) parameter tensor.

    The flat storage lets a single Adam update act on every layer of every fold.
    """

    def __init__(self, widths: list[int], k: int, generator: torch.Generator, device):
        shapes = [s for i, o in zip(widths, widths[1:]) for s in ((i, o), (1, o))]
        sizes = [r * c for r, c in shapes]
        self.flat = torch.empty(k, sum(sizes), device=device)
        chunks = self.flat.split(sizes, dim=1)
        self.params = [chunk.view(k, *shape) for chunk, shape in zip(chunks, shapes)]
        is_weight = [torch.full((size,), float(i % 2 == 0)) for i, size in enumerate(sizes)]
        self.weight_mask = torch.cat(is_weight).to(device)[:, None]
        for weight, bias in self.layers():
            # sklearn's Glorot-uniform bound for ReLU nets, used for weights and biases alike.
            bound = (6.0 / sum(weight.shape[1:])) ** 0.5
            weight.uniform_(-bound, bound, generator=generator)
            bias.uniform_(-bound, bound, generator=generator)

    def layers(self) -> list[tuple[Tensor, Tensor]]:
        """(weight (k, in, out), bias (k, 1, out)) of each layer."""
        return list(zip(self.params[::2], self.params[1::2]))

    def squared_weight_norm(self) -> Tensor:
        """(k, 1) sum of squared weights (not biases), sklearn's L2 penalty."""
        return self.flat.square() @ self.weight_mask

    def forward(self, inputs: Tensor) -> tuple[list[Tensor], Tensor]:
        """inputs: (k, b, d) → (inputs of each layer, logits (k, b))."""
        activations = [inputs]
        *hidden, (weight, bias) = self.layers()
        for w, b in hidden:
            activations.append(torch.relu(torch.baddbmm(b, activations[-1], w)))
        return activations, torch.baddbmm(bias, activations[-1], weight).squeeze(-1)


def _loss_and_gradient(
    net: _BatchedMLP, inputs: Tensor, targets: Tensor, batch: _Batch
) -> tuple[Tensor, Tensor]:
    """sklearn's batch objective (mean log-loss + α/2·|W|²/b) and its gradient, per fold.

    Args:
        inputs: (k, b, d) one batch per fold; targets: (k, b) labels in {0, 1}.

    Returns:
        The objective times b, i.e. summed log-loss plus α/2·|W|², (k, 1); gradient, (k, p).
    """
    activations, logits = net.forward(inputs)
    delta = ((torch.sigmoid(logits) - targets) * batch.valid / batch.count).unsqueeze(-1)
    l2_scale = (_L2_ALPHA / batch.count).unsqueeze(-1)
    grads = []
    for i, (weight, _) in reversed(list(enumerate(net.layers()))):
        grads += [
            delta.sum(1, keepdim=True),
            torch.baddbmm(weight * l2_scale, activations[i].mT, delta),
        ]
        if i > 0:
            delta = (delta @ weight.mT) * (activations[i] > 0)

    log_loss = (F.softplus(logits) - targets * logits).clamp(_MIN_LOG_LOSS, _MAX_LOG_LOSS)
    loss = (log_loss * batch.valid).sum(1, keepdim=True)
    loss += 0.5 * _L2_ALPHA * net.squared_weight_norm() * batch.present
    return loss, torch.cat([g.flatten(1) for g in reversed(grads)], dim=1)


class _Adam:
    """sklearn's Adam update applied per fold; inactive folds are left untouched."""

    def __init__(self, params: Tensor):
        self.params = params
        self.m = torch.zeros_like(params)
        self.v = torch.zeros_like(params)
        self.t = torch.zeros(len(params), 1, device=params.device)

    def step(self, grad: Tensor, active: Tensor) -> None:
        """grad: (k, p); active: (k, 1) 1.0 for folds to update, 0.0 for the others."""
        self.t += active
        self.m.lerp_(grad, (1 - _BETA1) * active)
        self.v.lerp_(grad.square(), (1 - _BETA2) * active)
        t = self.t.clamp(min=1)
        step_size = active * _LEARNING_RATE * (1 - _BETA2**t).sqrt() / (1 - _BETA1**t)
        self.params.addcdiv_(self.m * step_size, self.v.sqrt().add_(_ADAM_EPS), value=-1)


def _train(
    net: _BatchedMLP, data: Tensor, labels: Tensor, train: _Padded, generator: torch.Generator
) -> None:
    """Mini-batch Adam on each fold's training set until sklearn's stopping rule ends it.

    A fold stops once its epoch loss has not improved on its best by ``_TOL`` for more than
    ``_PATIENCE`` consecutive epochs (sklearn's rule without early stopping).
    """
    batches = _batches(train, min(_BATCH_SIZE, train.index.shape[1]))
    adam = _Adam(net.flat)
    best = torch.full(train.lengths.shape, float("inf"), device=data.device)
    stale = torch.zeros_like(best)
    running = torch.ones_like(best)
    for _ in range(_MAX_EPOCHS):
        order = train.shuffled(generator)
        epoch_loss = torch.zeros_like(best)
        for batch in batches:
            index = order[:, batch.start : batch.stop]
            loss, grad = _loss_and_gradient(net, data[index], labels[index], batch)
            adam.step(grad, running * batch.present)
            epoch_loss += loss
        epoch_loss /= train.lengths
        stale = torch.where(epoch_loss > best - _TOL, stale + 1, 0)
        best = torch.minimum(best, epoch_loss)
        running *= stale <= _PATIENCE
        if not running.any():
            break


def _accuracy(net: _BatchedMLP, data: Tensor, labels: Tensor, test: _Padded) -> Tensor:
    """(k, 1) accuracy of each fold's network on its held-out set."""
    _, logits = net.forward(data[test.index])
    correct = ((logits > 0) == (labels[test.index] > 0.5)) & test.valid()
    return correct.sum(1, keepdim=True) / test.lengths


def _squared_distances(a: Tensor, b: Tensor) -> Tensor:
    """(n, m) squared distances between the rows of a: (n, d) and b: (m, d), via inner products."""
    squared_norms = a.square().sum(1, keepdim=True) + b.square().sum(1)
    return torch.addmm(squared_norms, a, b.T, alpha=-2).clamp_min_(0)


def _pair_squared_distances(x: Tensor, chunk_size: int) -> Iterator[Tensor]:
    """The n(n-1)/2 squared distances |x_i - x_j|², i < j, of x: (n, d) as 1-D blocks."""
    for start in range(0, len(x), chunk_size):
        stop = start + chunk_size
        rows = x[start:stop]
        within = _squared_distances(rows, rows)
        yield within[torch.ones_like(within, dtype=torch.bool).triu(1)]
        yield _squared_distances(rows, x[stop:]).flatten()


def _median_pairwise_squared_distance(x: Tensor, chunk_size: int) -> float:
    """Lower median of the pairwise squared distances of x: (n, d).

    Its square root is torch.median(torch.pdist(x)), up to rounding. Exact, in two chunked
    passes: a histogram locates the bin holding the median, then only that bin's values are kept
    and ranked.
    """
    total = len(x) * (len(x) - 1) // 2
    rank = (total - 1) // 2  # 0-based rank of the lower median
    bound = 4 * (x - x.mean(0)).square().sum(1).max().item()  # ≥ every squared distance
    if bound == 0:
        return 0.0
    bins_per_unit = _MEDIAN_BINS / bound

    def bins(squared: Tensor) -> Tensor:
        return (squared * bins_per_unit).int().clamp_max_(_MEDIAN_BINS - 1)

    counts = sum(
        torch.bincount(bins(block), minlength=_MEDIAN_BINS)
        for block in _pair_squared_distances(x, chunk_size)
    )
    below = counts.cumsum(0)
    median_bin = int(torch.searchsorted(below, rank, right=True))
    rank -= int(below[median_bin - 1]) if median_bin > 0 else 0
    in_bin = torch.cat([b[bins(b) == median_bin] for b in _pair_squared_distances(x, chunk_size)])
    return in_bin.kthvalue(rank + 1).values.item()


def _kernel_sum(a: Tensor, b: Tensor, sigma2: float, chunk_size: int) -> float:
    """Σ_ij exp(-|a_i - b_j|² / (2·sigma2)) over a: (n, d), b: (m, d), chunk_size rows at a time."""
    total = 0.0
    for start in range(0, len(a), chunk_size):
        kernel = _squared_distances(a[start : start + chunk_size], b).mul_(-0.5 / sigma2)
        total += kernel.exp_().sum(dtype=torch.float64).item()
    return total
