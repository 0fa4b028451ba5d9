"""POET layers against dense matrices, closed-form Cayley–Neumann errors, and their training."""

import copy
import sys

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import fmpe
from fmpe import FMPE
from fmpe.networks.poet import (
    POET,
    POETLinear,
    POETMerge,
    cayley,
    cayley_neumann,
    poet_parameter_groups,
    rotation_parameter_count,
    skew_symmetric,
    upper_triangle_index,
)
from fmpe.networks.velocity import VelocityNetwork

F64 = torch.float64


def random_skew(batch: int, size: int, spectral_norm: float) -> torch.Tensor:
    """(batch, size, size) skew-symmetric matrices of the given spectral norm, in float64."""
    m = torch.randn(batch, size, size, dtype=F64)
    q = m - m.mT
    return q * spectral_norm / torch.linalg.matrix_norm(q, ord=2)[:, None, None]


def skew_from_upper(values: torch.Tensor, size: int) -> torch.Tensor:
    """Q = M − Mᵀ with the strict upper triangle of M filled row by row."""
    m = torch.zeros(size, size, dtype=values.dtype)
    k = 0
    for i in range(size):
        for j in range(i + 1, size):
            m[i, j] = values[k]
            k += 1
    return m - m.T


def orthogonal_by_powers(q: torch.Tensor, terms: int | None) -> torch.Tensor:
    """The (truncated) Cayley transform from its definition, with explicit matrix powers."""
    identity = torch.eye(q.shape[-1], dtype=q.dtype)
    if terms is None:
        return torch.linalg.solve(identity - q, identity + q)
    return (identity + q) @ sum(torch.linalg.matrix_power(q, j) for j in range(terms + 1))


def dense_rotation(values, dim, block_size, terms, permutation) -> torch.Tensor:
    """Ψᵀ·blockdiag(G_1 … G_k)·Ψ as a (dim, dim) matrix, full blocks first, then the rest."""
    size = min(block_size, dim)
    sizes = [size] * (dim // size) + ([dim % size] if dim % size else [])
    chunks = values.detach().split([s * (s - 1) // 2 for s in sizes])
    blocks = [orthogonal_by_powers(skew_from_upper(c, s), terms) for c, s in zip(chunks, sizes)]
    psi = torch.eye(dim, dtype=values.dtype)[permutation]  # Ψ v = v[permutation]
    return psi.T @ torch.block_diag(*blocks) @ psi


def dense_weight(layer: POETLinear) -> torch.Tensor:
    """R·W0·P built from dense matrices."""
    r = dense_rotation(
        layer.output_rotation,
        layer.out_features,
        layer.block_size,
        layer.neumann_terms,
        layer.output_permutation,
    )
    p = dense_rotation(
        layer.input_rotation,
        layer.in_features,
        layer.block_size,
        layer.neumann_terms,
        layer.input_permutation,
    )
    return r @ layer.base_weight @ p


def randomize_rotations(layer: POETLinear, scale: float) -> None:
    with torch.no_grad():
        for parameter in layer.rotation_parameters():
            parameter.normal_(0.0, scale)


# The maths


def test_skew_symmetric_blocks_fill_their_strict_upper_triangles_row_by_row():
    sizes = [4, 4, 3, 1]  # the last blocks padded to 4 x 4
    values = torch.randn(6 + 6 + 3)
    q = skew_symmetric(values, upper_triangle_index(sizes, 4), len(sizes), 4)
    chunks = values.split([6, 6, 3, 0])
    for block, (size, chunk) in enumerate(zip(sizes, chunks)):
        assert torch.equal(q[block, :size, :size], skew_from_upper(chunk, size))
        padded = q[block].clone()
        padded[:size, :size] = 0
        assert torch.equal(padded, torch.zeros(4, 4))
    assert torch.equal(q, -q.mT)
    assert torch.equal(torch.diagonal(q, dim1=-2, dim2=-1), torch.zeros(4, 4))


def test_rotations_are_the_identity_at_zero():
    zero = torch.zeros(4, 6, 6)
    for terms in (1, 2, 3, 4):
        assert torch.equal(cayley_neumann(zero, terms), torch.eye(6).expand(4, 6, 6))
    assert torch.equal(cayley(zero), torch.eye(6).expand(4, 6, 6))


def test_neumann_error_is_cayley_times_a_power_of_q():
    torch.manual_seed(0)
    q = random_skew(5, 6, 0.3)
    identity = torch.eye(6, dtype=F64)
    exact = torch.linalg.solve(identity - q, identity + q)
    torch.testing.assert_close(cayley(q), exact, rtol=0, atol=1e-14)
    torch.testing.assert_close(exact @ exact.mT, identity.expand_as(q), rtol=0, atol=1e-14)
    for k in range(1, 6):
        error = cayley_neumann(q, k) - exact
        expected = -exact @ torch.linalg.matrix_power(q, k + 1)
        torch.testing.assert_close(error, expected, rtol=0, atol=1e-14)
        torch.testing.assert_close(
            torch.linalg.matrix_norm(error), torch.linalg.matrix_norm(expected), rtol=1e-10, atol=0
        )


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5])
def test_orthogonality_error_has_its_closed_form(k):
    torch.manual_seed(k)
    q = random_skew(4, 8, 0.4)
    r = cayley_neumann(q, k)
    error = r @ r.mT - torch.eye(8, dtype=F64)
    power = torch.linalg.matrix_power(q, k + 1)
    # R_k = C (I − Q^(k+1)) with C orthogonal and (Q^(k+1))ᵀ = (−1)^(k+1) Q^(k+1).
    expected = -power @ power if k % 2 == 0 else -2 * power + power @ power
    torch.testing.assert_close(error, expected, rtol=0, atol=1e-15)


# The layer


def test_parameter_count_is_m_plus_n_times_b_minus_one_over_two():
    layer = POETLinear(64, 128, block_size=16)
    rotations = sum(p.numel() for p in layer.rotation_parameters())
    assert rotations == (64 + 128) * (16 - 1) // 2
    assert sum(p.numel() for p in layer.parameters()) == rotations + 128
    # 13 = 4 + 4 + 4 + 1 and 7 = 4 + 3; a block of 1 has no free parameter.
    assert rotation_parameter_count(13, 4) == 3 * 6
    assert rotation_parameter_count(7, 4) == 6 + 3
    assert rotation_parameter_count(5, 8) == 10  # one block of the whole dimension


@pytest.mark.parametrize(
    ("in_features", "out_features", "block_size", "terms", "bias"),
    [
        (8, 16, 4, 3, True),
        (13, 7, 4, 2, False),
        (5, 3, 8, None, True),
        (12, 12, 5, 4, True),
        (5, 1, 4, 3, True),
    ],
)
def test_forward_is_the_dense_effective_weight(in_features, out_features, block_size, terms, bias):
    torch.manual_seed(0)
    layer = POETLinear(
        in_features, out_features, block_size=block_size, bias=bias, neumann_terms=terms, dtype=F64
    )
    randomize_rotations(layer, 0.2)
    weight = dense_weight(layer)
    assert (weight - layer.base_weight).abs().max() > 0.1
    torch.testing.assert_close(layer.effective_weight(), weight, rtol=0, atol=1e-13)
    x = torch.randn(2, 3, in_features, dtype=F64)
    expected = x @ weight.T + (layer.bias if bias else 0)
    out = layer(x)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-13)
    assert out.is_contiguous()


def test_initial_weight_is_the_row_normalized_base_weight():
    torch.manual_seed(0)
    layer = POETLinear(20, 30, block_size=8)
    torch.testing.assert_close(layer.base_weight.norm(dim=1), torch.ones(30))
    assert all(torch.equal(p, torch.zeros_like(p)) for p in layer.rotation_parameters())
    torch.testing.assert_close(layer.effective_weight(), layer.base_weight, rtol=0, atol=0)


@pytest.mark.parametrize("bias", [True, False])
def test_merge_keeps_the_function_and_resets_the_rotations(bias):
    torch.manual_seed(0)
    layer = POETLinear(10, 14, block_size=4, bias=bias, dtype=F64)
    randomize_rotations(layer, 0.2)
    x = torch.randn(50, 10, dtype=F64)
    before = layer(x)
    weight = layer.effective_weight()
    permutations = [layer.output_permutation.clone(), layer.input_permutation.clone()]
    layer.merge(torch.Generator().manual_seed(1))
    torch.testing.assert_close(layer(x), before, rtol=0, atol=1e-13)
    torch.testing.assert_close(layer.base_weight, weight, rtol=0, atol=1e-14)
    assert all(torch.equal(p, torch.zeros_like(p)) for p in layer.rotation_parameters())
    assert not torch.equal(layer.output_permutation, permutations[0])
    assert not torch.equal(layer.input_permutation, permutations[1])
    assert torch.equal(layer.output_permutation.sort().values, torch.arange(14))


def test_exact_cayley_keeps_the_singular_values_over_many_merges():
    torch.manual_seed(0)
    layer = POETLinear(12, 20, block_size=4, neumann_terms=None, dtype=F64)
    base_weight = layer.base_weight.clone()
    initial = torch.linalg.svdvals(base_weight)
    generator = torch.Generator().manual_seed(0)
    for _ in range(30):
        randomize_rotations(layer, 0.3)
        layer.merge(generator)
    assert (layer.base_weight - base_weight).abs().max() > 0.5
    torch.testing.assert_close(torch.linalg.svdvals(layer.base_weight), initial, rtol=1e-12, atol=0)


@pytest.mark.parametrize("k", [3, 4])
def test_neumann_singular_value_drift_stays_within_its_bound(k):
    """σ_i(R W0 P) lies in [σ_min(R) σ_min(P), σ_max(R) σ_max(P)] · σ_i(W0) at every merge.

    R Rᵀ = I − 2Q^(k+1) + Q^(2k+2) ⪯ I for odd k (Q² ⪯ 0), so singular values only shrink;
    R Rᵀ = I − Q^(2k+2) ⪰ I for even k, so they only grow.
    """
    torch.manual_seed(0)
    layer = POETLinear(12, 20, block_size=4, neumann_terms=k, dtype=F64)
    initial = torch.linalg.svdvals(layer.base_weight)
    lower, upper = 1.0, 1.0
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        randomize_rotations(layer, 0.05)
        r = torch.linalg.svdvals(
            dense_rotation(layer.output_rotation, 20, 4, k, layer.output_permutation)
        )
        p = torch.linalg.svdvals(
            dense_rotation(layer.input_rotation, 12, 4, k, layer.input_permutation)
        )
        lower, upper = lower * r.min() * p.min(), upper * r.max() * p.max()
        layer.merge(generator)
    ratio = torch.linalg.svdvals(layer.base_weight) / initial
    assert (ratio >= lower - 1e-12).all() and (ratio <= upper + 1e-12).all()
    assert (ratio - 1).abs().max() > 1e-8  # CNP is not exactly orthogonal
    if k % 2 == 1:
        assert upper <= 1 + 1e-12 and lower > 0.95
    else:
        assert lower >= 1 - 1e-12 and upper < 1.001


@pytest.mark.parametrize("terms", [None, 3])
def test_gradients_pass_gradcheck(terms):
    torch.manual_seed(0)
    # 7 = 3 + 3 + 1 and 5 = 3 + 2: both kinds of last block.
    layer = POETLinear(7, 5, block_size=3, neumann_terms=terms, dtype=F64)
    names = ["output_rotation", "input_rotation", "bias"]
    inputs = [torch.randn(4, 7, dtype=F64)] + [
        0.3 * torch.randn_like(getattr(layer, n)) for n in names
    ]
    inputs = [t.requires_grad_() for t in inputs]

    def forward(x, *values):
        return torch.func.functional_call(layer, dict(zip(names, values)), (x,))

    assert torch.autograd.gradcheck(forward, tuple(inputs))


def test_materialize_and_from_linear_keep_the_function():
    torch.manual_seed(0)
    x = torch.randn(30, 9, dtype=F64)
    for bias in (True, False):
        linear = nn.Linear(9, 6, bias=bias, dtype=F64)
        layer = POETLinear.from_linear(linear, block_size=4)
        assert layer.base_weight.dtype == F64 and (layer.bias is None) == (not bias)
        torch.testing.assert_close(layer(x), linear(x), rtol=0, atol=1e-14)
        randomize_rotations(layer, 0.2)
        plain = layer.materialize()
        assert type(plain) is nn.Linear
        torch.testing.assert_close(plain(x), layer(x), rtol=0, atol=1e-13)


@pytest.mark.parametrize("gain", [False, True])
def test_averaged_state_averages_effective_weights_across_merges(gain):
    """A moving average that lerps toward averaged_state() holds the average of the effective
    weights (with a gain: the averaged gain times the average of R·W0·P); one that lerps the
    raw state does not once a merge has changed W0."""
    torch.manual_seed(0)
    layer = POETLinear(8, 6, block_size=4, dtype=F64)
    if gain:
        layer.start_near_zero(0.5)
    average, naive = copy.deepcopy(layer), copy.deepcopy(layer)
    expected_weight, expected_bias = layer.rotated_weight(), layer.bias.detach().clone()
    expected_gain = layer.gain.detach().clone() if gain else torch.ones((), dtype=F64)
    generator = torch.Generator().manual_seed(0)

    def lerp_toward(copy_: nn.Module, targets: dict[str, torch.Tensor]) -> None:
        raw = layer.state_dict()
        for name, entry in copy_.state_dict().items():
            value = targets.get(name, raw[name])
            entry.lerp_(value, 0.3) if entry.is_floating_point() else entry.copy_(value)

    for step in range(12):
        with torch.no_grad():
            for parameter in layer.parameters():
                parameter.add_(0.1 * torch.randn_like(parameter))
        if step % 4 == 3:
            layer.merge(generator)
        lerp_toward(average, layer.averaged_state())
        lerp_toward(naive, {})
        expected_weight.lerp_(layer.rotated_weight(), 0.3)
        expected_bias.lerp_(layer.bias.detach(), 0.3)
        if gain:
            expected_gain.lerp_(layer.gain.detach(), 0.3)

    expected_weight = expected_gain * expected_weight
    torch.testing.assert_close(average.effective_weight(), expected_weight, rtol=0, atol=1e-13)
    assert all(torch.equal(p, torch.zeros_like(p)) for p in average.rotation_parameters())
    x = torch.randn(10, 8, dtype=F64)
    torch.testing.assert_close(
        average(x), x @ expected_weight.T + expected_bias, rtol=0, atol=1e-13
    )
    assert (naive.effective_weight() - expected_weight).abs().max() > 1e-2


def assert_is_the_dense_formula(layer: POETLinear, atol: float) -> None:
    """The effective weight and the forward pass against R·W0·P from dense matrices, and the
    inverse permutations against the permutations."""
    weight = dense_weight(layer)
    assert (weight - layer.base_weight).abs().max() > 0.1
    torch.testing.assert_close(layer.effective_weight(), weight, rtol=0, atol=atol)
    x = torch.randn(7, layer.in_features, dtype=weight.dtype)
    torch.testing.assert_close(layer(x), x @ weight.T + layer.bias, rtol=0, atol=atol)
    for side in ("output", "input"):
        permutation = getattr(layer, f"{side}_permutation")
        inverse = getattr(layer, f"{side}_inverse_permutation")
        assert torch.equal(permutation[inverse], torch.arange(len(permutation)))


@pytest.mark.parametrize(
    ("in_features", "out_features", "block_size", "dtype", "atol"),
    [(13, 7, 4, F64, 1e-13), (16, 24, 8, F64, 1e-13), (20, 12, 8, torch.float32, 1e-5)],
)
def test_effective_weight_is_the_dense_formula_after_merges_and_loads(
    in_features, out_features, block_size, dtype, atol
):
    torch.manual_seed(0)
    layer = POETLinear(in_features, out_features, block_size=block_size, dtype=dtype)
    randomize_rotations(layer, 0.2)
    assert_is_the_dense_formula(layer, atol)
    layer.merge(torch.Generator().manual_seed(1))
    randomize_rotations(layer, 0.2)
    assert_is_the_dense_formula(layer, atol)

    state = layer.state_dict()
    # A fresh layer has other permutations; loading takes them, with their inverses, also
    # from a state dict saved before the inverses were kept.
    before_inverses = {k: v for k, v in state.items() if "inverse" not in k}
    for saved in (state, before_inverses):
        loaded = POETLinear(in_features, out_features, block_size=block_size, dtype=dtype)
        assert not torch.equal(loaded.input_permutation, layer.input_permutation)
        loaded.load_state_dict(saved)
        assert_is_the_dense_formula(loaded, atol)
        assert torch.equal(loaded.effective_weight(), layer.effective_weight())


def test_a_layer_started_near_zero_stays_able_to_grow():
    """start_near_zero: W = g·R·W0·P with a trainable g at the scale, small biases; merges,
    the materialized layer and the dense formula all keep the gain."""
    torch.manual_seed(0)
    layer = POETLinear(12, 10, block_size=4, dtype=F64)
    layer.start_near_zero(1e-3)
    assert layer.gain.item() == 1e-3 and layer.bias.abs().max() <= 1e-3
    torch.testing.assert_close(layer.effective_weight(), 1e-3 * layer.base_weight, rtol=0, atol=0)
    x = torch.randn(30, 12, dtype=F64)
    assert layer(x).abs().max() < 1e-2
    loss = layer(x).square().sum()
    loss.backward()
    assert layer.gain.grad is not None and float(layer.gain.grad) != 0
    with torch.no_grad():
        layer.gain.fill_(0.7)
    randomize_rotations(layer, 0.2)
    weight = 0.7 * dense_weight(layer)
    torch.testing.assert_close(layer.effective_weight(), weight, rtol=0, atol=1e-13)
    torch.testing.assert_close(layer(x), x @ weight.T + layer.bias, rtol=0, atol=1e-13)
    torch.testing.assert_close(layer.materialize()(x), layer(x), rtol=0, atol=1e-13)
    layer.merge(torch.Generator().manual_seed(1))
    torch.testing.assert_close(layer(x), x @ weight.T + layer.bias, rtol=0, atol=1e-13)
    assert layer.gain.item() == 0.7


@pytest.mark.parametrize("linear", [None, POET(block_size=4)], ids=["linear", "poet"])
def test_residual_blocks_start_near_the_identity(linear):
    """As ordinary blocks do, POET blocks (their gates too) start within 1% of the identity;
    only each block's last layer gets a gain."""
    torch.manual_seed(0)
    network = VelocityNetwork(2, (3,), hidden_widths=(16, 32), x_route="both", linear=linear)
    for block in network.net.blocks:
        width = block.linear1.in_features
        z, context = torch.randn(64, width), torch.randn(64, block.gate.in_features)
        with torch.no_grad():
            change = block(z, context) - z
        assert change.norm() < 1e-2 * z.norm()
    gains = [name for name, _ in network.named_parameters() if name.endswith("gain")]
    if linear is not None:
        assert gains == ["net.blocks.0.linear2.gain", "net.blocks.1.linear2.gain"]
        assert not any(type(m) is nn.Linear for m in network.modules())


@pytest.mark.parametrize("linear", [None, POET(block_size=4)], ids=["linear", "poet"])
def test_blocks_can_be_left_as_their_layers_are_drawn(linear):
    """near_identity_blocks=False: no gain, and each block's last layer as the factory draws
    it (POET's unit-norm rows), so no block starts near the identity."""
    torch.manual_seed(0)
    network = VelocityNetwork(
        2, (3,), hidden_widths=(16, 32), linear=linear, near_identity_blocks=False
    )
    for block in network.net.blocks:
        z = torch.randn(64, block.linear1.in_features)
        with torch.no_grad():
            change = block(z) - z
        assert change.norm() > 0.1 * z.norm()
    assert not [name for name, _ in network.named_parameters() if name.endswith("gain")]


def test_end_layers_can_stay_ordinary_while_the_others_are_poet(gaussian, tmp_path):
    """end_linear="linear": the first and last layer of each residual network (the (t, θ)
    embedding's too) are ordinary, every other layer POET; the network still brings POET's
    merges and optimizer groups, and its trained posterior saves and loads like any other."""
    options = {
        "hidden_widths": (16, 32),
        "t_theta_widths": (8,),
        "linear": {"name": "poet", "block_size": 4},
        "end_linear": "linear",
    }
    network = VelocityNetwork(2, (2,), **options)
    for net in (network.net, network.t_theta_embedding):
        assert type(net.input_layer) is nn.Linear and type(net.output_layer) is nn.Linear
        for block in net.blocks:
            assert isinstance(block.linear1, POETLinear) and isinstance(block.linear2, POETLinear)
    assert isinstance(network.net.resizes[0], POETLinear)
    (merge,) = network.training_callbacks()
    assert isinstance(merge, POETMerge)
    rotations = {id(p) for layer in network.modules() if isinstance(layer, POETLinear)
                 for p in layer.rotation_parameters()}  # fmt: skip
    ordinary, rotation_group = network.parameter_groups()
    assert {id(p) for p in rotation_group["params"]} == rotations
    assert id(network.net.input_layer.weight) in {id(p) for p in ordinary["params"]}

    posterior = FMPE(gaussian.simulator, gaussian.prior, network_options=options).train(
        500, max_epochs=2, show_progress=False
    )
    assert not any(isinstance(m, POETLinear) for m in posterior.network.modules())
    path = tmp_path / "ends.fmpe"
    posterior.save(path)
    theta, x = torch.randn(5, 2), torch.zeros(2)
    torch.testing.assert_close(fmpe.load(path).log_prob(theta, x), posterior.log_prob(theta, x))


def test_seeded_merges_are_reproducible():
    torch.manual_seed(0)
    layer = POETLinear(16, 16, block_size=4)
    copies = [copy.deepcopy(layer) for _ in range(3)]
    for layer_copy, seed in zip(copies, (5, 5, 6)):
        layer_copy.merge(torch.Generator().manual_seed(seed))
    states = [c.state_dict() for c in copies]
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert not torch.equal(states[0]["input_permutation"], states[2]["input_permutation"])


def test_parameter_groups_give_the_rotations_their_learning_rate():
    net = nn.Sequential(POETLinear(6, 8, block_size=4), nn.Linear(8, 2))
    groups = poet_parameter_groups(net, learning_rate=1e-3, rotation_learning_rate=4e-3)
    assert [g["lr"] for g in groups] == [1e-3, 4e-3]
    rotations = {id(p) for p in net[0].rotation_parameters()}
    assert {id(p) for p in groups[1]["params"]} == rotations
    others = {id(net[0].bias), id(net[1].weight), id(net[1].bias)}
    assert {id(p) for p in groups[0]["params"]} == others
    assert len(poet_parameter_groups(nn.Linear(2, 2), 1e-3, 4e-3)) == 1
    torch.optim.AdamW(groups)


def test_factory_builds_poet_layers_and_their_callback():
    factory = POET(block_size=4, neumann_terms=None, merge_every=50)
    layer = factory(6, 3, bias=False)
    assert isinstance(layer, POETLinear) and layer.bias is None
    assert (layer.block_size, layer.neumann_terms) == (4, None)
    (callback,) = factory.training_callbacks()
    assert isinstance(callback, POETMerge) and callback.every_n_steps == 50


def test_gains_let_a_layer_scale_its_fixed_spectrum():
    """A target three times a layer's initial map: with POET(gains=True) the gain learns the
    factor and the loss goes to zero; without it the singular values cannot grow."""
    losses = {}
    for gains in (False, True):
        torch.manual_seed(0)
        layer = POET(block_size=4, neumann_terms=None, gains=gains)(6, 6)
        if gains:
            assert layer.gain.requires_grad and layer.gain.item() == 1.0
        with torch.no_grad():
            target = 3.0 * layer.effective_weight()
        x = torch.randn(256, 6)
        optimizer = torch.optim.Adam(layer.parameters(), lr=0.05)
        for _ in range(300):
            optimizer.zero_grad()
            loss = F.mse_loss(layer(x) - layer.bias, x @ target.T)
            loss.backward()
            optimizer.step()
        losses[gains] = loss.item()
    assert losses[True] < 1e-3 < 1.0 < losses[False]
    assert layer.gain.item() == pytest.approx(3.0, rel=1e-2)
    assert torch.allclose(layer.materialize().weight, layer.effective_weight())


def test_bad_input_is_refused_with_clear_messages():
    with pytest.raises(ValueError, match="block_size must be an integer >= 1"):
        POETLinear(4, 4, block_size=0)
    with pytest.raises(ValueError, match="neumann_terms must be a positive integer or None"):
        POETLinear(4, 4, block_size=2, neumann_terms=0)
    with pytest.raises(ValueError, match=r"expected inputs of shape \(\.\.\., 4\)"):
        POETLinear(4, 4, block_size=2)(torch.zeros(3, 5))
    with pytest.raises(ValueError, match="one value per position"):
        skew_symmetric(torch.zeros(5), upper_triangle_index([4], 4), 1, 4)
    with pytest.raises(ValueError, match=r"block sizes \[5\] do not fit in 4x4"):
        upper_triangle_index([5], 4)
    with pytest.raises(ValueError, match="every_n_steps must be an integer >= 1"):
        POETMerge(0)
    with pytest.raises(ValueError, match="clip_ramp_steps must be an integer >= 0"):
        POETMerge(5, clip_ramp_steps=-1)
    with pytest.raises(ValueError, match="merge_every must be an integer >= 1"):
        POET(block_size=4, merge_every=0)
    with pytest.raises(ValueError, match="gains must be true or false"):
        POET(gains="yes")


# Training with Lightning


class ToyRegression(L.LightningModule):
    """Two POET layers fitting a fixed smooth map, 4 batches an epoch."""

    def __init__(self, optimizer: str = "adamw", fused: bool = False, loss_scale: float = 1.0):
        super().__init__()
        self.net = nn.Sequential(
            POETLinear(6, 10, block_size=4), nn.Tanh(), POETLinear(10, 2, block_size=4)
        )
        self.optimizer_name = optimizer
        self.fused = fused
        self.loss_scale = loss_scale

    def training_step(self, batch, batch_idx):
        x, y = batch
        return self.loss_scale * F.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        groups = poet_parameter_groups(self.net, 1e-2, 3e-2)
        if self.optimizer_name == "sgd":
            return NormRecordingSGD(groups)
        return torch.optim.AdamW(groups, fused=self.fused)


class NormRecordingSGD(torch.optim.SGD):
    """SGD that records the gradient norm it steps with, i.e. after Lightning's clipping."""

    def __init__(self, params):
        super().__init__(params, lr=1e-6)
        self.norms: list[float] = []

    def step(self, closure=None):
        loss = closure()  # backward and Lightning's gradient clipping
        grads = [p.grad for group in self.param_groups for p in group["params"]]
        self.norms.append(float(torch.linalg.vector_norm(torch.cat([g.flatten() for g in grads]))))
        super().step()
        return loss


def toy_data() -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(64, 6, generator=generator)
    y = torch.sin(x[:, :2] + x[:, 2:4] * x[:, 4:])
    return DataLoader(TensorDataset(x, y), batch_size=16)


def fit(module, callbacks, ckpt_path=None, **trainer_kwargs) -> L.Trainer:
    trainer = L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
        **{"devices": 1, **trainer_kwargs},
    )
    trainer.fit(module, train_dataloaders=toy_data(), ckpt_path=ckpt_path)
    return trainer


class RecordOptimizerSteps(L.Callback):
    """After each optimizer step: (global step, step counts of every rotation, of the biases)."""

    def __init__(self):
        self.rows = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        state = trainer.optimizers[0].state
        layers = [module.net[0], module.net[2]]

        def count(p):
            return int(state[p]["step"]) if p in state else None

        rotations = [count(p) for layer in layers for p in layer.rotation_parameters()]
        self.rows.append((trainer.global_step, rotations, [count(x.bias) for x in layers]))


@pytest.mark.parametrize("fused", [False, True])
def test_merges_clear_the_rotations_optimizer_state_exactly_at_merge_steps(fused):
    torch.manual_seed(0)
    module = ToyRegression(fused=fused)
    base_weight = module.net[0].base_weight.clone()
    merge, record = POETMerge(3), RecordOptimizerSteps()
    fit(module, [merge, record], max_steps=10)
    assert [row[0] for row in record.rows] == list(range(1, 11))
    for step, rotations, biases in record.rows:
        assert biases == [step, step]
        assert rotations == [None if step % 3 == 0 else step % 3] * 4
    assert merge.merges == 3
    assert not torch.equal(module.net[0].base_weight, base_weight)


def test_clipping_threshold_ramps_up_after_each_merge():
    torch.manual_seed(0)
    module = ToyRegression(optimizer="sgd", loss_scale=1e4)  # every step is clipped
    trainer = fit(module, [POETMerge(4, clip_ramp_steps=3)], max_steps=12, gradient_clip_val=0.5)
    ramp = [0.5 / 3, 1 / 3]
    expected = [0.5] * 4 + ramp + [0.5] * 2 + ramp + [0.5] * 2
    torch.testing.assert_close(trainer.optimizers[0].norms, expected, rtol=1e-5, atol=0)
    assert trainer.gradient_clip_val == 0.5


def test_checkpoint_resumes_the_merges_exactly(tmp_path):
    def train(max_epochs, ckpt_path=None):
        torch.manual_seed(0)
        module, merge = ToyRegression(), POETMerge(3, seed=1)
        trainer = fit(module, [merge], ckpt_path=ckpt_path, max_epochs=max_epochs)
        return module, merge, trainer

    straight, straight_merge, _ = train(4)  # 16 steps, merges at 3, 6, 9, 12, 15
    _, _, half = train(2)
    half.save_checkpoint(tmp_path / "half.ckpt")
    resumed, resumed_merge, _ = train(4, tmp_path / "half.ckpt")
    assert resumed_merge.merges == straight_merge.merges == 5
    for key, value in straight.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value), key
    assert torch.equal(
        resumed_merge.state_dict()["generator_state"],
        straight_merge.state_dict()["generator_state"],
    )


class RecordPermutations(L.Callback):
    """Gives each rank its own global random state, then saves the permutations after merges."""

    def __init__(self, folder):
        self.folder = folder

    def on_train_start(self, trainer, module):
        torch.manual_seed(100 + trainer.global_rank)
        torch.save(torch.randperm(50), self.folder / f"global_rank{trainer.global_rank}.pt")

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.global_step % 2 == 0:
            permutations = [b.clone() for n, b in module.named_buffers() if "permutation" in n]
            name = f"rank{trainer.global_rank}_step{trainer.global_step}.pt"
            torch.save(permutations, self.folder / name)


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed missing")
@pytest.mark.skipif(sys.platform != "linux", reason="gloo process groups tested on Linux")
def test_ddp_ranks_draw_the_same_permutations(tmp_path):
    torch.manual_seed(0)
    initial = [b.clone() for n, b in ToyRegression().named_buffers() if "permutation" in n]
    torch.manual_seed(0)
    fit(
        ToyRegression(),
        [POETMerge(2, seed=3), RecordPermutations(tmp_path)],
        max_steps=6,
        devices=2,
        strategy="ddp_spawn",
    )
    global_draws = [torch.load(tmp_path / f"global_rank{r}.pt") for r in (0, 1)]
    assert not torch.equal(*global_draws)  # the ranks' own random states differ
    drawn = {}
    for step in (2, 4, 6):
        ranks = [torch.load(tmp_path / f"rank{r}_step{step}.pt") for r in (0, 1)]
        assert all(torch.equal(a, b) for a, b in zip(*ranks)), step
        drawn[step] = ranks[0]
    for a, b in [(initial, drawn[2]), (drawn[2], drawn[4]), (drawn[4], drawn[6])]:
        assert not torch.equal(a[0], b[0])


def test_the_factory_takes_exact_for_the_exact_cayley_transform():
    # Cards are TOML, which has no None: "exact" stands for it.
    layer = POET(block_size=4, neumann_terms="exact")(8, 6)
    assert layer.neumann_terms is None
    with pytest.raises(ValueError, match="neumann_terms"):
        POET(neumann_terms="approximate")
