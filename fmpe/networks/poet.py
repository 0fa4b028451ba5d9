"""POET: linear layers trained through orthogonal equivalence transformations.

Qiu et al., "Reparameterized LLM Training via Orthogonal Equivalence Transformation"
(arXiv:2506.08001). A weight is W = R·W0·P with W0 (m, n) fixed and R (m, m), P (n, n)
orthogonal, so the singular values of W stay those of W0 while training learns its singular
vectors. Each rotation is block-stochastic: R = Ψᵀ·blockdiag(G_1 … G_k)·Ψ with Ψ a random
permutation and every block G = Cayley(Q) of a skew-symmetric Q, optionally with the inverse
replaced by a truncated Neumann series (CNP). Every few hundred steps `POETMerge` folds R and P
into W0, sets Q back to zero, draws new permutations and clears the rotations' optimizer state.

A dimension d that is not a multiple of the block size b is cut into d // b blocks of size b
and one last block of size d mod b; a block size above d is reduced to d (one block).
"""

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn

from fmpe.checks import as_count


def block_sizes(dim: int, block_size: int) -> list[int]:
    """The blocks `dim` coordinates are cut into: dim // b of b = min(block_size, dim), then
    one of dim mod b if that is not zero."""
    size = min(block_size, dim)
    return [size] * (dim // size) + ([dim % size] if dim % size else [])


def rotation_parameter_count(dim: int, block_size: int) -> int:
    """Free parameters of a block-diagonal rotation of `dim` coordinates: s(s − 1)/2 a block."""
    return sum(size * (size - 1) // 2 for size in block_sizes(dim, block_size))


def upper_triangle_index(sizes: Sequence[int], padded_size: int) -> Tensor:
    """Where the free parameters of skew-symmetric blocks go in a (blocks, b, b) tensor.

    Block i fills the top-left sizes[i] x sizes[i] corner of the i-th b x b matrix, whose strict
    upper triangle takes the parameters row by row; blocks follow one another.

    -> (Σ s(s − 1)/2,) flat positions into (len(sizes), padded_size, padded_size)
    """
    if max(sizes) > padded_size:
        raise ValueError(f"block sizes {list(sizes)} do not fit in {padded_size}x{padded_size}")
    positions = []
    for block, size in enumerate(sizes):
        rows, cols = torch.triu_indices(size, size, offset=1)
        positions.append((block * padded_size + rows) * padded_size + cols)
    return torch.cat(positions)


def skew_symmetric(values: Tensor, index: Tensor, blocks: int, size: int) -> Tensor:
    """Q = M − Mᵀ with M zero but for `values` at the flat positions `index`.

    values: (p,), index: (p,) from `upper_triangle_index` -> (blocks, size, size)
    """
    if values.shape != index.shape:
        raise ValueError(
            f"expected one value per position, got values of shape {tuple(values.shape)} "
            f"for {len(index)} positions"
        )
    upper = values.new_zeros(blocks * size * size).index_copy(0, index, values)
    upper = upper.view(blocks, size, size)
    return upper - upper.mT


def cayley(q: Tensor) -> Tensor:
    """The exact Cayley transform (I + Q)(I − Q)⁻¹, orthogonal for skew-symmetric Q.

    q: (..., b, b) -> (..., b, b)
    """
    identity = torch.eye(q.shape[-1], dtype=q.dtype, device=q.device)
    # (I + Q) and (I − Q)⁻¹ commute, so the product is one linear solve.
    return torch.linalg.solve(identity - q, identity + q)


def cayley_neumann(q: Tensor, terms: int) -> Tensor:
    """The Cayley transform with (I − Q)⁻¹ replaced by I + Q + … + Q^terms.

    It equals C·(I − Q^(terms+1)) for the exact Cayley matrix C, so the orthogonality error is
    ‖Q^(2 terms + 2)‖ for even `terms` and ‖2 Q^(terms+1) − Q^(2 terms + 2)‖ for odd ones.

    q: (blocks, b, b) -> (blocks, b, b)
    """
    if terms < 1:
        raise ValueError(f"the Neumann series needs at least 1 term, got {terms}")
    identity = torch.eye(q.shape[-1], dtype=q.dtype, device=q.device).expand_as(q)
    series = identity + q
    for _ in range(terms - 1):
        series = torch.baddbmm(identity, q, series)
    return torch.baddbmm(series, q, series)


def rotate_blocks(u: Tensor, rotations: Tensor) -> Tensor:
    """blockdiag(G_1 … G_k)·u, the last block possibly cut short.

    u: (d, N), rotations: (k, b, b) with (k − 1) b < d <= k b -> (d, N)
    """
    blocks, size, _ = rotations.shape
    dim = u.shape[0]
    padded = F.pad(u, (0, 0, 0, blocks * size - dim)).view(blocks, size, -1)
    return torch.bmm(rotations, padded).view(blocks * size, -1)[:dim]


def _check_neumann_terms(terms: int | None) -> None:
    if terms is not None and (not isinstance(terms, int) or terms < 1):
        raise ValueError(
            f"neumann_terms must be a positive integer or None (exact Cayley), got {terms!r}"
        )


_ROTATIONS = ("output_rotation", "input_rotation")


class POETLinear(nn.Module):
    """A linear layer x ↦ x·Wᵀ + bias with W = R·W0·P, R and P block-stochastic rotations.

    W0 is a fixed buffer, drawn as a Gaussian with unit-norm rows (the paper's "normalized
    Gaussian"); the trainable parameters are the strict upper triangles of the rotation blocks,
    (out_features + in_features)(b − 1)/2 of them when both dimensions are multiples of b, all
    zero at initialization so that W = W0. The bias, drawn as nn.Linear draws it, is added after
    the output rotation. The forward pass rotates activations and never forms R or P.
    `start_near_zero` adds a trainable scalar gain, W = g·R·W0·P, for a layer that must start
    near the zero map (the last layer of a residual block).

    Args:
        block_size: b; see the module docstring for dimensions that are not multiples of b.
        neumann_terms: terms of the Neumann series of the Cayley transform, None for the exact
            transform (a linear solve per block).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        block_size: int,
        bias: bool = True,
        neumann_terms: int | None = 3,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        as_count(in_features, "in_features", minimum=1)
        as_count(out_features, "out_features", minimum=1)
        as_count(block_size, "block_size", minimum=1)
        _check_neumann_terms(neumann_terms)
        self.in_features = in_features
        self.out_features = out_features
        self.block_size = block_size
        self.neumann_terms = neumann_terms
        factory = {"device": device, "dtype": dtype}

        base_weight = torch.randn(out_features, in_features, **factory)
        self.register_buffer("base_weight", base_weight / base_weight.norm(dim=1, keepdim=True))
        for side, features in (("output", out_features), ("input", in_features)):
            permutation = torch.randperm(features, device=device)
            self.register_buffer(f"{side}_permutation", permutation)
            # Kept with the permutation (merges and loads update both), so that no pass sorts.
            self.register_buffer(f"{side}_inverse_permutation", torch.argsort(permutation))
        self.output_rotation = nn.Parameter(
            torch.zeros(rotation_parameter_count(out_features, block_size), **factory)
        )
        self.input_rotation = nn.Parameter(
            torch.zeros(rotation_parameter_count(in_features, block_size), **factory)
        )
        # Both rotations' blocks are built in one batch of (k_out + k_in) b x b matrices, b the
        # larger of the two sides' block sizes; a smaller block is padded with the identity.
        output_sizes = block_sizes(out_features, block_size)
        sizes = output_sizes + block_sizes(in_features, block_size)
        self._output_blocks = len(output_sizes)
        self._blocks = len(sizes)
        self._padded_size = max(sizes)
        self.register_buffer(
            "upper_index",
            upper_triangle_index(sizes, self._padded_size).to(device),
            persistent=False,
        )
        if bias:
            bound = 1 / math.sqrt(in_features)
            self.bias = nn.Parameter(torch.empty(out_features, **factory).uniform_(-bound, bound))
        else:
            self.register_parameter("bias", None)
        self.register_parameter("gain", None)

    @classmethod
    def from_linear(
        cls, linear: nn.Linear, *, block_size: int, neumann_terms: int | None = 3
    ) -> "POETLinear":
        """A POETLinear computing the same function as `linear`, with W0 = linear.weight."""
        weight = linear.weight
        layer = cls(
            linear.in_features,
            linear.out_features,
            block_size=block_size,
            bias=linear.bias is not None,
            neumann_terms=neumann_terms,
            device=weight.device,
            dtype=weight.dtype,
        )
        with torch.no_grad():
            layer.base_weight.copy_(weight)
            if linear.bias is not None:
                layer.bias.copy_(linear.bias)
        return layer

    def add_gain(self, initial: float) -> None:
        """Gives the layer a trainable scalar gain g, W = g·R·W0·P, starting at `initial`: its
        singular values are then g·σ(W0), fixed up to that one factor."""
        factory = {"device": self.base_weight.device, "dtype": self.base_weight.dtype}
        self.gain = nn.Parameter(torch.full((), float(initial), **factory))

    def start_near_zero(self, scale: float) -> None:
        """Makes the layer start within about `scale` of the zero map, yet able to grow.

        W0's singular values are fixed, so shrinking W0 alone would keep the layer near zero
        for good. Instead a gain (`add_gain`) starts at `scale`, and the bias is drawn from
        U(−scale, scale). The last layer of a residual block starts so, for the block to start
        near the identity.
        """
        self.add_gain(scale)
        if self.bias is not None:
            with torch.no_grad():
                self.bias.uniform_(-scale, scale)

    def rotation_parameters(self) -> list[nn.Parameter]:
        """The free parameters of the output and input rotations (reset by every merge)."""
        return [self.output_rotation, self.input_rotation]

    def rotation_blocks(self) -> tuple[Tensor, Tensor]:
        """The blocks G of R and of P, padded to a common size b: ((k_out, b, b), (k_in, b, b))."""
        values = torch.cat([self.output_rotation, self.input_rotation])
        q = skew_symmetric(values, self.upper_index, self._blocks, self._padded_size)
        blocks = cayley(q) if self.neumann_terms is None else cayley_neumann(q, self.neumann_terms)
        return blocks[: self._output_blocks], blocks[self._output_blocks :]

    def _permuted_base_weight(self) -> Tensor:
        """Ψ_out·W0·Ψ_inᵀ, W0 in the frames where R and P are block-diagonal:
        (out_features, in_features)"""
        return self.base_weight.index_select(0, self.output_permutation).index_select(
            1, self.input_permutation
        )

    def _transform(self, columns: Tensor) -> Tensor:
        """R·W0·P·columns without forming R, P or W: (in_features, N) -> (out_features, N)"""
        output_blocks, input_blocks = self.rotation_blocks()
        # The two inner permutations act on the (small) weight instead of the activations.
        # Activations are handled as columns, so that each block rotation is one batched
        # product without transposed copies.
        h = rotate_blocks(columns.index_select(0, self.input_permutation), input_blocks)
        h = rotate_blocks(self._permuted_base_weight() @ h, output_blocks)
        return h.index_select(0, self.output_inverse_permutation)

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args, **kwargs) -> None:
        # The inverses follow the loaded permutations, also where a state dict saved before
        # they were kept lacks them (the dict is torch's copy, not the caller's).
        for side in ("output", "input"):
            permutation = state_dict.get(f"{prefix}{side}_permutation")
            if permutation is not None:
                state_dict[f"{prefix}{side}_inverse_permutation"] = torch.argsort(permutation)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: Tensor) -> Tensor:
        """x: (..., in_features) -> (..., out_features)"""
        if x.shape[-1] != self.in_features:
            raise ValueError(
                f"expected inputs of shape (..., {self.in_features}), got {tuple(x.shape)}"
            )
        out = self._transform(x.reshape(-1, self.in_features).T).T.contiguous()
        if self.gain is not None:
            out = out * self.gain
        if self.bias is not None:
            out = out + self.bias
        return out.view(*x.shape[:-1], self.out_features)

    def rotated_weight(self) -> Tensor:
        """R·W0·P = Ψ_outᵀ·B_out·(Ψ_out·W0·Ψ_inᵀ)·B_in·Ψ_in, B the block-diagonal rotations,
        from one batched product of b x b blocks on each side and two gathers:
        (out_features, in_features)"""
        output_blocks, input_blocks = self.rotation_blocks()
        h = rotate_blocks(self._permuted_base_weight(), output_blocks)
        h = rotate_blocks(h.T, input_blocks.mT).T  # X·B = (Bᵀ·Xᵀ)ᵀ
        return h.index_select(0, self.output_inverse_permutation).index_select(
            1, self.input_inverse_permutation
        )

    def effective_weight(self) -> Tensor:
        """W = g·R·W0·P, g = 1 without a gain: (out_features, in_features)"""
        weight = self.rotated_weight()
        return weight if self.gain is None else self.gain * weight

    @torch.no_grad()
    def merge(self, generator: torch.Generator | None = None) -> None:
        """W0 ← R·W0·P, Q ← 0 and new permutations (from `generator`, a CPU generator, or
        torch's default one): the layer's function is unchanged. Every tensor is updated in place,
        so optimizers and averages that hold them stay attached."""
        self.base_weight.copy_(self.rotated_weight())
        for parameter in self.rotation_parameters():
            parameter.zero_()
        for side in ("output", "input"):
            permutation = getattr(self, f"{side}_permutation")
            permutation.copy_(torch.randperm(len(permutation), generator=generator))
            getattr(self, f"{side}_inverse_permutation").copy_(torch.argsort(permutation))

    def averaged_state(self) -> dict[str, Tensor]:
        """The state entries a moving average should follow: W0 ← R·W0·P, Q ← 0 and the bias
        (a gain is averaged as it is).

        An average of these is a linear map (times the averaged gain) holding the average of
        R·W0·P, which merges never change, so it stays consistent across merges.
        """
        with torch.no_grad():
            state = {"base_weight": self.rotated_weight()}
            state.update({name: torch.zeros_like(getattr(self, name)) for name in _ROTATIONS})
            if self.bias is not None:
                state["bias"] = self.bias.detach()
        return state

    def materialize(self) -> nn.Linear:
        """An ordinary nn.Linear with the effective weight and the bias."""
        weight = self.base_weight
        linear = nn.Linear(
            self.in_features,
            self.out_features,
            bias=self.bias is not None,
            device=weight.device,
            dtype=weight.dtype,
        )
        with torch.no_grad():
            linear.weight.copy_(self.effective_weight())
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"block_size={self.block_size}, bias={self.bias is not None}, "
            f"neumann_terms={self.neumann_terms}"
        )


def poet_layers(module: nn.Module) -> list[POETLinear]:
    """Every POETLinear in `module`, itself included."""
    return [m for m in module.modules() if isinstance(m, POETLinear)]


def poet_parameter_groups(
    module: nn.Module, learning_rate: float | None, rotation_learning_rate: float | None
) -> list[dict]:
    """Optimizer parameter groups: the rotations of every POETLinear at `rotation_learning_rate`,
    every other parameter at `learning_rate` (None: the optimizer's own learning rate); empty
    groups are left out."""
    rotations = [p for layer in poet_layers(module) for p in layer.rotation_parameters()]
    rotation_ids = {id(p) for p in rotations}
    others = [p for p in module.parameters() if id(p) not in rotation_ids]
    groups = [
        {"params": others, "lr": learning_rate},
        {"params": rotations, "lr": rotation_learning_rate},
    ]
    groups = [{k: v for k, v in g.items() if v is not None} for g in groups]
    return [group for group in groups if group["params"]]


def clear_optimizer_state(optimizer: torch.optim.Optimizer, parameters: Iterable[Tensor]) -> None:
    """Forgets the optimizer's state (moments, step count) of `parameters`; torch's Adam and
    AdamW, fused or not, start it afresh at their next step."""
    for parameter in parameters:
        optimizer.state.pop(parameter, None)


class POETMerge(Callback):
    """Merges every POETLinear of the LightningModule every `every_n_steps` optimizer steps.

    Each merge folds the rotations into W0, clears the rotations' optimizer state and draws the
    new permutations from the callback's own generator seeded with `seed`, so that every DDP
    rank draws the same ones whatever its global random state. For `clip_ramp_steps` steps after
    a merge the trainer's gradient-clipping threshold (Trainer(gradient_clip_val=...), nothing
    to ramp without one) is scaled by j / clip_ramp_steps at the j-th step, as in the paper.
    The generator state, the merge count and the step of the last merge are checkpointed; W0 and
    the permutations are module buffers. With the global random state and the shuffling, which
    fmpe's training checkpoints, a resumed run continues bit for bit on the same machine.
    """

    def __init__(self, every_n_steps: int, seed: int = 0, clip_ramp_steps: int = 10):
        as_count(every_n_steps, "every_n_steps", minimum=1)
        as_count(clip_ramp_steps, "clip_ramp_steps")
        self.every_n_steps = every_n_steps
        self.seed = seed
        self.clip_ramp_steps = clip_ramp_steps
        self.merges = 0
        self.last_merge_step = 0
        self._generator_state: Tensor | None = None
        self._configured_clip: float | None = None

    def _generator(self) -> torch.Generator:
        # Created on use and kept as a state tensor in between, so that the callback pickles
        # (ddp_spawn sends it to every process) and checkpoints cleanly.
        generator = torch.Generator()
        if self._generator_state is None:
            generator.manual_seed(self.seed)
        else:
            generator.set_state(self._generator_state)
        return generator

    def clip_scale(self, step: int) -> float:
        """The factor of the clipping threshold for the optimizer step taken after `step` steps:
        j / clip_ramp_steps for the j-th step after a merge, 1 otherwise."""
        since_merge = step % self.every_n_steps
        if step < self.every_n_steps or since_merge >= self.clip_ramp_steps:
            return 1.0
        return (since_merge + 1) / self.clip_ramp_steps

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._configured_clip = trainer.gradient_clip_val

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        trainer.gradient_clip_val = self._configured_clip

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception) -> None:
        trainer.gradient_clip_val = self._configured_clip

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        # Lightning reads trainer.gradient_clip_val right after this hook to clip the step.
        if self._configured_clip:
            trainer.gradient_clip_val = self._configured_clip * self.clip_scale(trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        # With gradient accumulation several batches end at the same optimizer step.
        if step % self.every_n_steps != 0 or step == self.last_merge_step:
            return
        generator = self._generator()
        for layer in poet_layers(pl_module):
            layer.merge(generator)
            for optimizer in trainer.optimizers:
                clear_optimizer_state(optimizer, layer.rotation_parameters())
        self._generator_state = generator.get_state()
        self.merges += 1
        self.last_merge_step = step

    def state_dict(self) -> dict:
        return {
            "generator_state": self._generator().get_state(),
            "merges": self.merges,
            "last_merge_step": self.last_merge_step,
        }

    def load_state_dict(self, state_dict: dict) -> None:
        self._generator_state = state_dict["generator_state"]
        self.merges = state_dict["merges"]
        self.last_merge_step = state_dict["last_merge_step"]


@dataclass(frozen=True)
class POET:
    """A `linear(in_features, out_features, bias=True)` factory of POETLinear layers, with the
    callbacks their training needs.

    Args:
        block_size: b of every layer's rotations.
        neumann_terms: Neumann terms of the Cayley transform; None (or "exact", for cards,
            which TOML cannot give a None) for the exact transform. Even
            counts are far more orthogonal than odd ones (‖Q‖^(2k+2) against about 2‖Q‖^(k+1));
            200 AdamW steps at learning rates 1e-3 to 4e-3 reached spectral norms ‖Q‖ of 0.2 to
            0.6 on a toy regression, where k = 3 is off orthogonality by 3e-3 to 0.24 and k = 4
            by 1e-7 to 6e-3, for one more small product a step.
        merge_every: optimizer steps between merges.
        seed: seed of the permutations drawn at the merges.
        clip_ramp_steps: steps over which the clipping threshold recovers after a merge.
        rotation_learning_rate: the learning rate of the rotations (None: the optimizer's);
            the paper uses larger ones for smaller blocks.
        gains: give every layer a trainable scalar gain starting at 1 (`POETLinear.add_gain`),
            so that training can scale a layer's fixed spectrum as a whole.
    """

    block_size: int = 32
    neumann_terms: int | str | None = 4
    merge_every: int = 200
    seed: int = 0
    clip_ramp_steps: int = 10
    rotation_learning_rate: float | None = None
    gains: bool = False

    def __post_init__(self):
        as_count(self.block_size, "block_size", minimum=1)
        if self.neumann_terms == "exact":
            object.__setattr__(self, "neumann_terms", None)
        _check_neumann_terms(self.neumann_terms)
        as_count(self.merge_every, "merge_every", minimum=1)
        as_count(self.clip_ramp_steps, "clip_ramp_steps")
        if not isinstance(self.gains, bool):
            raise ValueError(f"gains must be true or false, got {self.gains!r}")

    def __call__(self, in_features: int, out_features: int, bias: bool = True) -> POETLinear:
        layer = POETLinear(
            in_features,
            out_features,
            block_size=self.block_size,
            bias=bias,
            neumann_terms=self.neumann_terms,
        )
        if self.gains:
            layer.add_gain(1.0)
        return layer

    def parameter_groups(self, module: nn.Module) -> list[dict]:
        """Optimizer groups of a network built by this factory (see `poet_parameter_groups`)."""
        return poet_parameter_groups(module, None, self.rotation_learning_rate)

    def training_callbacks(self) -> list[Callback]:
        return [POETMerge(self.merge_every, seed=self.seed, clip_ramp_steps=self.clip_ramp_steps)]
