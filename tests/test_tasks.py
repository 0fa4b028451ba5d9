"""The simulator plug-ins (fmpe.tasks): sbibm's ten tasks, SIR/Lotka–Volterra fidelity, cards."""

from importlib.util import find_spec

import pytest
import torch
from torch.distributions import Binomial

from fmpe.benchmark.cards import CardError, CardStore, TaskCard, available_cards, load_card
from fmpe.ode.dopri import solve_per_row
from fmpe.tasks import NoReferenceSamplesError, Task, available_tasks, get_task

SBIBM_TASKS = {
    "gaussian_linear": (10, 10),
    "gaussian_linear_uniform": (10, 10),
    "gaussian_mixture": (2, 2),
    "two_moons": (2, 2),
    "slcp": (5, 8),
    "slcp_distractors": (5, 100),
    "bernoulli_glm": (10, 10),
    "bernoulli_glm_raw": (10, 100),
    "sir": (2, 10),
    "lotka_volterra": (4, 20),
}

needs_sbibm = pytest.mark.skipif(find_spec("sbibm") is None, reason="needs fmpe[sbibm]")

_TASKS: dict[str, Task] = {}


@pytest.fixture(params=sorted(SBIBM_TASKS))
def task(request) -> Task:
    if find_spec("sbibm") is None:
        pytest.skip("needs fmpe[sbibm]")
    if request.param not in _TASKS:
        _TASKS[request.param] = get_task(request.param)
    return _TASKS[request.param]


def test_registry_knows_the_ten_tasks():
    assert set(SBIBM_TASKS) <= set(available_tasks())


def test_unknown_task_names_the_known_ones():
    with pytest.raises(ValueError, match="unknown task 'two_moon'.*two_moons"):
        get_task("two_moon")


def test_dimensions(task):
    theta_dim, x_dim = SBIBM_TASKS[task.name]
    assert (task.theta_dim, task.x_shape, task.num_observations) == (theta_dim, (x_dim,), 10)


def test_prior_shapes_and_support(task):
    theta = task.prior.sample((7,))
    assert theta.shape == (7, task.theta_dim)
    assert task.prior.support.check(theta).all()
    log_prob = task.prior.log_prob(theta)
    assert log_prob.shape == (7,)
    assert torch.isfinite(log_prob).all()

    # Far outside a bounded or positive support, and NaN: -inf, never an exception.
    theta[0, 0] = -1e6
    theta[1, -1] = float("nan")
    log_prob = task.prior.log_prob(theta)
    inside = task.prior.support.check(theta)
    assert not inside[1]
    assert torch.equal(torch.isfinite(log_prob), inside)
    assert (log_prob[~inside] == -torch.inf).all()


def test_simulate_a_small_batch(task):
    torch.manual_seed(0)
    theta = task.prior.sample((20,))
    x = task.simulate(theta)
    assert x.shape == (20, *task.x_shape)
    assert x.dtype == torch.float32
    assert torch.isfinite(x).all()
    with pytest.raises(ValueError, match="theta must have shape"):
        task.simulate(theta[:, :-1])


def test_observations_and_true_parameters(task):
    for i in range(1, 11):
        x = task.observation(i)
        theta = task.true_parameters(i)
        assert x.shape == task.x_shape and torch.isfinite(x).all()
        assert theta.shape == (task.theta_dim,) and torch.isfinite(theta).all()
        assert task.prior.support.check(theta)
    assert not torch.equal(task.observation(1), task.observation(10))
    for i in (0, 11):
        with pytest.raises(ValueError, match="observation number"):
            task.observation(i)


def test_reference_samples(task):
    for i in (1, 10):
        samples = task.reference_samples(i)
        assert samples.shape == (10_000, task.theta_dim)
        assert torch.isfinite(samples).all()
        assert task.prior.support.check(samples).all()


@needs_sbibm
def test_sbibm_leaves_torchs_validation_default_alone():
    """sbibm turns argument validation off globally when a task is built; fmpe must not."""
    before = torch.distributions.Distribution._validate_args
    task = get_task("two_moons")
    task.simulate(task.prior.sample((3,)))
    assert torch.distributions.Distribution._validate_args == before


class Bare(Task):
    """A minimal plug-in: θ ~ N(0, 1), x = θ, no benchmark data."""

    name, theta_dim, x_shape, num_observations = "bare", 1, (1,), 0
    prior = torch.distributions.Independent(torch.distributions.Normal(torch.zeros(1), 1.0), 1)

    def _simulate(self, theta):
        return theta

    def observation(self, i):
        self._check_observation(i)

    def true_parameters(self, i):
        self._check_observation(i)


def test_a_task_without_reference_samples_says_so():
    with pytest.raises(NoReferenceSamplesError, match="'bare' ships no reference"):
        Bare().reference_samples(1)


def test_plug_ins_register_by_name():
    from fmpe.tasks import TASKS, register_task

    register_task("bare", Bare)
    try:
        assert "bare" in available_tasks()
        task = get_task("bare")
        assert task.simulate(torch.ones(4, 1)).shape == (4, 1)
        with pytest.raises(ValueError, match="already registered"):
            register_task("bare", Bare)
    finally:
        TASKS.unregister("bare")


@needs_sbibm
def test_lotka_volterra_reproduces_the_shipped_observations():
    """sbibm drew each observation as: seed torch, sample the prior, simulate."""
    lv = get_task("lotka_volterra")
    for i in range(1, 11):
        torch.manual_seed(lv.observation_seed(i))
        theta = lv.prior.sample((1,))
        torch.testing.assert_close(theta[0], lv.true_parameters(i))
        x = lv.simulate(theta)[0]
        assert (x - lv.observation(i)).abs().max() <= 1e-3, f"observation {i}"


@needs_sbibm
def test_sir_observations_are_plausible_draws_from_the_true_parameters():
    """The binomial draws cannot be replayed (torch's sampler changed), but each shipped
    observation must be a typical draw given the noise-free solution at its true parameters."""
    sir = get_task("sir")
    torch.manual_seed(0)
    p_values = []
    for i in range(1, 11):
        torch.manual_seed(sir.observation_seed(i))
        torch.testing.assert_close(sir.prior.sample((1,))[0], sir.true_parameters(i))

        probs = (sir.infected(sir.true_parameters(i)[None])[0] / 1e6).clamp(0.0, 1.0)
        noise = Binomial(1000, probs=probs)
        log_lik = noise.log_prob(sir.observation(i).double()).sum()
        simulated = noise.log_prob(noise.sample((20_000,))).sum(dim=1)
        p_values.append((simulated <= log_lik).double().mean().item())
    assert min(p_values) > 1e-4, p_values
    assert sorted(p_values)[5] > 0.1, p_values


def test_solver_matches_the_closed_form_and_marks_failures_nan():
    """y' = p y², y(0) = 1: y = 1 / (1 - p t), which blows up at t = 1 for p = 1."""
    p = torch.tensor([[0.1], [-1.0], [1.0], [-3.0]], dtype=torch.float64)
    times = torch.tensor([0.0, 0.5, 2.0], dtype=torch.float64)
    y0 = torch.ones(4, 1, dtype=torch.float64)
    y = solve_per_row(lambda t, y, rows: p[rows] * y**2, y0, times, rtol=1e-8, atol=1e-8)
    assert y.shape == (4, 3, 1)
    exact = 1 / (1 - p * times)
    ok = [0, 1, 3]
    torch.testing.assert_close(y[ok, :, 0], exact[ok], rtol=1e-7, atol=0)
    assert torch.isnan(y[2]).all()


@needs_sbibm
@pytest.mark.parametrize("name", ["bernoulli_glm", "bernoulli_glm_raw"])
def test_batched_bernoulli_glm_is_sbibms_simulator(name):
    """Same seed, same spikes as sbibm's row-by-row loop; the shipped data replay. The
    spike-triggered averages are float32 sums taken in another order (batched), equal to
    rounding, which differs between CPUs."""
    from fmpe.tasks.sbibm import SbibmTask
    from fmpe.tasks.shipped import observation_seed, sbibm_files

    ours, theirs = get_task(name), SbibmTask(name)
    assert type(ours) is not SbibmTask
    theta = ours.prior.sample((300,))
    torch.manual_seed(1)
    x = ours.simulate(theta)
    torch.manual_seed(1)
    expected = theirs.simulate(theta)
    assert torch.equal(x[:, 0], expected[:, 0])  # spike counts (all 100 bins for the raw task)
    torch.testing.assert_close(x, expected, rtol=1e-6, atol=1e-5)

    files = sbibm_files("bernoulli_glm")
    for i in (1, 10):
        torch.manual_seed(observation_seed(files, i))
        theta = ours.prior.sample((1,))
        torch.testing.assert_close(theta[0], ours.true_parameters(i))
        torch.testing.assert_close(
            ours.simulate(theta)[0], ours.observation(i), rtol=1e-6, atol=1e-5
        )


@needs_sbibm
def test_lotka_volterra_noise_is_clamped_like_sbibm():
    lv = get_task("lotka_volterra")
    # Prey grow almost unchecked past 1e4 while predators die out below 1e-10.
    theta = torch.tensor([[1.0, 1e-6, 10.0, 1e-15]])
    u = lv.populations(theta)[0]
    assert u[5:10].min() > 1e5 and u[-5:].max() < 1e-20
    torch.manual_seed(0)
    x = lv.simulate(theta.expand(200, -1))
    log_x = x.double().log()
    # LogNormal(log 1e4, 0.1) and LogNormal(log 1e-10, 0.1) after clamping.
    assert ((log_x[:, 5:10] - torch.tensor(1e4).log()).abs() < 0.6).all()
    assert ((log_x[:, -5:] - torch.tensor(1e-10).log()).abs() < 0.6).all()


@needs_sbibm
def test_slcp_distractors_follow_sbibms_mixture():
    """The per-row draws have the distribution of sbibm's own mixture sampler."""
    from fmpe.tasks.shipped import sbibm_files
    from fmpe.tasks.slcp_distractors import _pickled_distributions

    task = get_task("slcp_distractors")
    with _pickled_distributions():
        mixture = torch.load(sbibm_files("slcp") / "gmm.torch")
    torch.manual_seed(0)
    # sbibm's sampler draws all 20 components per row; small chunks bound its memory.
    theirs = torch.cat([mixture.sample((250,)) for _ in range(8)])
    ours = task.distractors(2000)
    levels = torch.tensor([0.05, 0.25, 0.5, 0.75, 0.95], dtype=torch.float64)
    q_ours, q_theirs = ours.quantile(levels, dim=0), theirs.quantile(levels, dim=0)
    iqr = q_theirs[3] - q_theirs[1]
    # Sampling noise reaches about 0.45 IQR here; Gaussian instead of Student-t gives ~0.9.
    assert ((q_ours - q_theirs).abs() / iqr).max() < 0.7


@pytest.mark.slow
@needs_sbibm
def test_sir_grid_posterior_matches_the_reference_samples():
    sir = get_task("sir")
    reference = sir.reference_samples(1).double()
    low, high = reference.min(dim=0).values, reference.max(dim=0).values
    low, high = low - 0.25 * (high - low), high + 0.25 * (high - low)
    cells = 150
    beta, gamma = torch.meshgrid(
        *(torch.linspace(low[k], high[k], cells, dtype=torch.float64) for k in range(2)),
        indexing="ij",
    )
    grid = torch.stack([beta.reshape(-1), gamma.reshape(-1)], dim=1)
    probs = (sir.infected(grid).float().double() / 1e6).clamp(0.0, 1.0)
    log_post = Binomial(1000, probs=probs).log_prob(sir.observation(1).double()).sum(dim=1)
    weights = torch.softmax(log_post + sir.prior.log_prob(grid), dim=0)
    assert (
        weights.reshape(cells, cells)[[0, -1]].sum()
        + weights.reshape(cells, cells)[:, [0, -1]].sum()
        < 1e-6
    ), "the grid must cover the posterior"

    mean = weights @ grid
    std = (weights @ (grid - mean) ** 2).sqrt()
    ref_mean, ref_std = reference.mean(dim=0), reference.std(dim=0)
    assert ((mean - ref_mean).abs() < 0.1 * ref_std).all(), (mean, ref_mean)
    assert ((std / ref_std - 1).abs() < 0.1).all(), (std, ref_std)

    c2st = pytest.importorskip("fmpe.metrics").c2st
    generator = torch.Generator().manual_seed(0)
    picks = torch.multinomial(weights, 10_000, replacement=True, generator=generator)
    width = (high - low) / (cells - 1)
    jitter = (torch.rand(10_000, 2, generator=generator, dtype=torch.float64) - 0.5) * width
    assert c2st(reference, grid[picks] + jitter) < 0.56


@needs_sbibm
def test_every_task_has_a_card():
    assert set(SBIBM_TASKS) <= set(available_cards())
    for name in SBIBM_TASKS:
        card = load_card(name)
        assert (card.name, card.source) == (name, "sbibm")
        assert card.description
    for name in ("bernoulli_glm_raw", "slcp_distractors"):
        model, _ = load_card(name).hyperparameters(1000)
        routes = model["network_options"]
        assert (routes["theta_route"], routes["x_route"]) == ("gate", "main")


def _write_card(folder, name, body, source="test"):
    (folder / f"{name}.toml").write_text(
        f'name = "{name}"\nsource = "{source}"\ndescription = "a test card"\n' + body
    )


@pytest.fixture
def card_folder(tmp_path):
    (tmp_path / "defaults.toml").write_text("")
    return tmp_path


@pytest.fixture
def cards(card_folder):
    return CardStore(card_folder)


def test_budget_overrides_merge_over_the_defaults(card_folder, cards):
    _write_card(
        card_folder,
        "toy",
        """
[fmpe.model]
sigma_min = 1e-4
[fmpe.model.network_options]
hidden_widths = [64, 64]
[fmpe.train]
max_epochs = 100
batch_size = 128
[fmpe.budget.1000.train]
max_epochs = 300
[fmpe.budget.10000.model.network_options]
hidden_widths = [256, 256, 256]
[fmpe.budget.10000.train]
batch_size = 512
""",
    )
    card = cards.load("toy")
    assert isinstance(card, TaskCard)
    defaults = (
        {"network_options": {"hidden_widths": [64, 64]}, "sigma_min": 1e-4},
        {"max_epochs": 100, "batch_size": 128},
    )
    assert card.hyperparameters(500) == defaults
    assert card.hyperparameters(1000) == (defaults[0], {"max_epochs": 300, "batch_size": 128})
    assert card.hyperparameters(5000) == card.hyperparameters(1000)
    big = (
        {"network_options": {"hidden_widths": [256, 256, 256]}, "sigma_min": 1e-4},
        {"max_epochs": 100, "batch_size": 512},
    )
    assert card.hyperparameters(10_000) == big
    assert card.hyperparameters(10**6) == big

    model, _ = card.hyperparameters(10_000)
    model["network_options"]["hidden_widths"].append(1)
    assert card.hyperparameters(10_000) == big, "callers get copies"
    with pytest.raises(ValueError, match="positive"):
        card.hyperparameters(0)


def test_task_cards_override_the_base_card_in_layers(card_folder, cards):
    (card_folder / "defaults.toml").write_text(
        """
[fmpe.model.network_options]
hidden_widths = [128, 128]
activation = "gelu"
[fmpe.budget.1000.model.network_options]
hidden_widths = [64]
[fmpe.budget.10000]
"""
    )
    _write_card(
        card_folder,
        "toy",
        """
[fmpe.model]
map_to_unbounded = true
[fmpe.model.network_options]
hidden_widths = [32, 32]
theta_route = "gate"
[fmpe.budget.1000.model]
time_prior_exponent = 1.0
""",
    )
    card = cards.load("toy")
    base_and_task = {"hidden_widths": [32, 32], "activation": "gelu", "theta_route": "gate"}
    assert card.hyperparameters(100)[0] == {
        "network_options": base_and_task,
        "map_to_unbounded": True,
    }
    # The base card's budget override wins over the task's defaults; nested tables merge.
    assert card.hyperparameters(1000)[0] == {
        "network_options": {**base_and_task, "hidden_widths": [64]},
        "map_to_unbounded": True,
        "time_prior_exponent": 1.0,
    }
    # 1e4 is declared by the base card only: the task's 1e3 override stops there.
    assert card.hyperparameters(10_000) == card.hyperparameters(100)
    assert card.budgets() == [1000, 10_000]


def test_selected_tables_override_their_card_and_base_only_drops_the_task(card_folder, cards):
    (card_folder / "defaults.toml").write_text(
        """
[fmpe.train]
batch_size = 256
[fmpe.budget.1000.train]
max_epochs = 500
[fmpe.selected.1000.model]
time_prior_exponent = 0.0
[fmpe.selected.1000.train]
batch_size = 64
"""
    )
    _write_card(
        card_folder,
        "toy",
        """
[fmpe.budget.1000.model]
time_prior_exponent = 4.0
[fmpe.budget.1000.train]
learning_rate = 2e-3
[fmpe.selected.1000.train]
learning_rate = 5e-4
""",
        source="sbibm",
    )
    card = cards.load("toy")
    model, train = card.hyperparameters(1000)
    # The task's hand-written budget table beats the base card's selection; its own wins.
    assert model == {"time_prior_exponent": 4.0}
    assert train == {"batch_size": 64, "max_epochs": 500, "learning_rate": 5e-4}
    assert card.hyperparameters(1000, base_only=True) == (
        {"time_prior_exponent": 0.0},
        {"batch_size": 64, "max_epochs": 500},
    )
    assert card.hyperparameters(999, base_only=True) == ({}, {"batch_size": 256})
    # Where a sweep starts: the hand-written tables alone.
    assert card.hyperparameters(1000, selected=False) == (
        {"time_prior_exponent": 4.0},
        {"batch_size": 256, "max_epochs": 500, "learning_rate": 2e-3},
    )
    # The base card's selection was chosen over the sbibm tasks: another task keeps its own.
    _write_card(card_folder, "other", "")
    assert cards.load("other").hyperparameters(1000) == ({}, {"batch_size": 256, "max_epochs": 500})
    # A budget declared only by a selected table still ends the overrides below it.
    _write_card(card_folder, "toy", "[fmpe.selected.5000.train]\nlearning_rate = 1e-4\n")
    card = cards.load("toy")
    assert card.budgets() == [1000, 5000]
    assert card.hyperparameters(5000)[1] == {"batch_size": 256, "learning_rate": 1e-4}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("[model\n", "not valid TOML"),
        ("[modle]\n", "unknown keys"),
        ("fmpe = 3\n", "'fmpe' must be a table"),
        ("[fmpe.modle]\n", "unknown keys"),
        ("[fmpe]\nmodel = 3\n", "'model' must be a table"),
        ("[fmpe.budget.many.train]\n", "budget 'many' is not a positive integer budget"),
        ("[fmpe.budget.1000]\nepochs = 3\n", r"\[budget.1000\] may only hold"),
        ("[fmpe.budget.1000]\ntrain = 3\n", "'train' must be a table"),
        ("[fmpe.selected.x.train]\n", "selected 'x' is not a positive integer"),
        (
            "[fmpe.model]\nhidden = 3\n",
            "unknown model key 'hidden'; valid: coupling, embedding_net, ",
        ),
        (
            "[fmpe.model.network_options]\nwidth = 3\n",
            "unknown network option 'width'; valid: activation, batch_norm, dropout, ",
        ),
        ("[fmpe.budget.1000.train]\nlr = 3\n", "unknown training setting 'lr'; valid: batch_size"),
        ("[fmpe.model.solver]\ntol = 3\n", "unknown solver key 'tol'; valid: atol, divergence"),
        ("[npe.model.network_options]\nbin = 3\n", "unknown network option 'bin'; valid: bins"),
    ],
)
def test_malformed_cards_name_the_file(card_folder, cards, body, message):
    _write_card(card_folder, "bad", body)
    with pytest.raises(CardError, match=message) as error:
        cards.load("bad")
    assert "bad.toml" in str(error.value)


def test_card_name_must_match_its_file(card_folder, cards):
    (card_folder / "renamed.toml").write_text('name = "other"\nsource = "x"\ndescription = "y"\n')
    with pytest.raises(CardError, match="renamed.toml.*named 'other'"):
        cards.load("renamed")


def test_unknown_card_lists_the_known_ones(card_folder, cards):
    _write_card(card_folder, "toy", "")
    with pytest.raises(ValueError, match="no task card 'missing'; available: toy"):
        cards.load("missing")


def test_variants_override_last_and_must_be_declared(card_folder, cards):
    (card_folder / "defaults.toml").write_text(
        """
[fmpe.variants.poet.model.network_options.linear]
name = "poet"
block_size = 8
[fmpe.budget.1000.train]
batch_size = 64
"""
    )
    _write_card(
        card_folder,
        "toy",
        """
[fmpe.variants.poet.model.network_options.linear]
block_size = 4
[fmpe.variants.poet.train]
batch_size = 32
""",
    )
    card = cards.load("toy")
    assert card.variants() == ["poet"]
    model, train = card.hyperparameters(1000, "fmpe", "poet")
    assert model["network_options"]["linear"] == {"name": "poet", "block_size": 4}
    assert train == {"batch_size": 32}
    assert card.hyperparameters(1000) == ({}, {"batch_size": 64})
    with pytest.raises(ValueError, match="declares no variant 'wide' of fmpe; declared: poet"):
        card.hyperparameters(1000, "fmpe", "wide")


def test_a_variants_learning_rate_factor_follows_each_cards_rate(card_folder, cards):
    (card_folder / "defaults.toml").write_text(
        """
[fmpe.train]
learning_rate = 1e-3
[fmpe.budget.10000.train]
learning_rate = 2e-3
[fmpe.variants.poet.train]
learning_rate_factor = 4.0
"""
    )
    _write_card(card_folder, "toy", "")
    _write_card(card_folder, "fast", "[fmpe.selected.10000.train]\nlearning_rate = 5e-3\n")
    rates = {
        (name, budget): cards.load(name).hyperparameters(budget, "fmpe", "poet")[1]
        for name in ("toy", "fast")
        for budget in (1000, 10000)
    }
    assert rates[("toy", 1000)] == {"learning_rate": 4e-3}
    assert rates[("toy", 10000)] == {"learning_rate": 8e-3}
    assert rates[("fast", 10000)] == {"learning_rate": 2e-2}
    assert cards.load("toy").hyperparameters(10000) == ({}, {"learning_rate": 2e-3})

    _write_card(card_folder, "both", "[fmpe.variants.poet.train]\nlearning_rate = 1e-2\n")
    with pytest.raises(ValueError, match="learning_rate or learning_rate_factor, not both"):
        cards.load("both")
