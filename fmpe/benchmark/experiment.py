"""`Run`: one posterior of the benchmark, named by what trains it, with its label in the
results, its files, its hyperparameters from the task's card and how it trains.

    run = Run("two_moons", 10_000, variant="poet", seed=1)
    run.label                                   # "fmpe+poet", the results' estimator column
    posterior, seconds = run.train(Path("benchmarks/runs"), torch.device("cpu"))

A search or an ablation changes the card's settings for one run, and may train on
simulations it drew once for all its runs:

    run = Run("slcp", 10_000, selected=False, changes={"train": {"batch_size": 512}})
    posterior = run.fit(torch.device("cpu"), simulations=(theta, x))
"""

import copy
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from fmpe.benchmark.cards import CardStore, load_card, merge_tables
from fmpe.benchmark.rowlog import exclusive_lock
from fmpe.estimators import get_estimator
from fmpe.posteriors import Posterior
from fmpe.posteriors.file import load
from fmpe.tasks import get_task

Override = dict[str, dict]
"""{"model": {...}, "train": {...}}: changes to a card's hyperparameters."""


def with_changes(base: Override, changes: Override) -> Override:
    """`base` with the tables of `changes` merged in, key by key (neither is modified)."""
    unknown = set(changes) - {"model", "train"}
    if unknown:
        raise ValueError(f"changes hold tables 'model' and 'train', got {sorted(unknown)}")
    merged = copy.deepcopy(base)
    for part in ("model", "train"):
        merged.setdefault(part, {})
        merge_tables(merged[part], changes.get(part, {}))
    return merged


def trainer_kwargs(device: torch.device) -> dict:
    """Lightning Trainer arguments that train on `device`."""
    if device.type == "cuda":
        return {"accelerator": "gpu", "devices": [device.index or 0]}
    return {"accelerator": "cpu", "devices": 1}


ROUNDS_MARK = "@rounds"  # of a results label whose estimator trains in sequential rounds


def method_label(
    estimator: str, variant: str | None = None, defaults: bool = False, rounds: int = 1
) -> str:
    """What the results call an estimator with a card variant, trained with the task's card
    or with the base card's one configuration, in one round or several truncated ones:
    "fmpe", "fmpe+poet", "fmpe@defaults", "fmpe@rounds3"."""
    label = f"{estimator}@defaults" if defaults else estimator
    label = label if variant is None else f"{label}+{variant}"
    return label if rounds == 1 else f"{label}{ROUNDS_MARK}{rounds}"


@dataclass(frozen=True)
class Run:
    """An estimator trained on a task's simulations.

    Attributes:
        task, budget: the task's name and its simulations.
        estimator: a name in `fmpe.estimators.ESTIMATORS`.
        variant: a variant the task's card declares (e.g. "poet"), or None.
        defaults: train with the base card's one configuration instead of the task card's.
        seed: of the simulations and the training.
        rounds: truncated sequential rounds that share the budget (1: one amortized round).
        observation: the observation sequential rounds train for (only with rounds > 1).
        selected: with the card's generated ``selected`` sections (False: the hand-written
            settings a search starts from).
        changes: changes to the card's hyperparameters, for searches and ablations; a run
            with changes or without the selections keeps its files under a stem of its own.
    """

    task: str
    budget: int
    estimator: str = "fmpe"
    variant: str | None = None
    defaults: bool = False
    seed: int = 0
    rounds: int = 1
    observation: int | None = None
    selected: bool = True
    changes: Override | None = field(default=None, hash=False)

    def __post_init__(self):
        if (self.rounds > 1) != (self.observation is not None):
            raise ValueError(
                f"sequential rounds train for one observation: rounds={self.rounds} needs "
                f"{'an' if self.rounds > 1 else 'no'} observation, got {self.observation}"
            )

    @property
    def label(self) -> str:
        """What the results call it (`method_label`)."""
        return method_label(self.estimator, self.variant, self.defaults, self.rounds)

    def stem(self, run_dir: Path) -> Path:
        """Its files' path without suffix (one posterior per observation for rounds)."""
        stem = f"{self.task}_{self.budget}_{self.label}_seed{self.seed}"
        if self.changes or not self.selected:
            what = json.dumps(
                {"changes": self.changes, "selected": self.selected}, sort_keys=True, default=repr
            )
            stem += "_" + hashlib.sha1(what.encode()).hexdigest()[:10]
        return run_dir / (stem if self.observation is None else f"{stem}_obs{self.observation}")

    def posterior_path(self, run_dir: Path) -> Path:
        """Where `train` saves its posterior under `run_dir` (it exists once training finished)."""
        return self.stem(run_dir).with_suffix(".fmpe")

    def hyperparameters(self, cards: CardStore | None = None) -> tuple[dict, dict]:
        """The estimator's and the training's options, from the task's card in `cards`
        (default: the shipped cards), with its `changes`."""
        model, train = load_card(self.task, cards).hyperparameters(
            self.budget,
            self.estimator,
            self.variant,
            base_only=self.defaults,
            selected=self.selected,
        )
        changed = with_changes({"model": model, "train": train}, self.changes or {})
        return changed["model"], changed["train"]

    def fit(
        self,
        device: torch.device,
        *,
        checkpoint_dir: Path | None = None,
        show_progress: bool = True,
        cards: CardStore | None = None,
        simulations: tuple[Tensor, Tensor] | None = None,
    ) -> Posterior:
        """Trains the posterior on the task's simulations, drawn anew (resumed from
        `checkpoint_dir` where it holds a run) or given as `simulations` (θ (n, d), x (n,
        *x_shape), as the task's `training_simulate` draws them), and writes what trained it
        into its metadata."""
        if simulations is not None and self.rounds > 1:
            raise ValueError("sequential rounds draw their own simulations: pass none")
        if simulations is not None and len(simulations[0]) != self.budget:
            raise ValueError(
                f"the run's budget is {self.budget} simulations, but {len(simulations[0])} "
                "were given: the metadata would name the wrong budget"
            )
        task = get_task(self.task)
        model_options, train_options = self.hyperparameters(cards)
        torch.manual_seed(self.seed)
        estimator = get_estimator(self.estimator)(
            task.training_simulate, task.prior, **model_options
        )
        options = dict(
            seed=self.seed,
            augment_x=task.augment_x,
            trainer_kwargs=trainer_kwargs(device),
            show_progress=show_progress,
            **train_options,
        )
        if self.rounds > 1:
            x_obs = task.observation(self.observation)
            posterior = estimator.train_rounds(
                self.rounds, self.budget // self.rounds, x_obs, **options
            )
        elif simulations is not None:
            estimator.append_simulations(*simulations)
            posterior = estimator.train(checkpoint_dir=checkpoint_dir, **options)
        else:
            posterior = estimator.train(self.budget, checkpoint_dir=checkpoint_dir, **options)
        posterior.metadata.update(
            task=self.task, budget=self.budget, estimator=self.estimator, seed=self.seed
        )
        return posterior

    def train(
        self,
        run_dir: Path,
        device: torch.device,
        show_progress: bool = True,
        cards: CardStore | None = None,
    ) -> tuple[Posterior, float]:
        """The posterior, trained and saved under `run_dir` (checkpointed, so an interrupted
        run resumes), or reloaded if it was finished there, and its training seconds.

        The hyperparameters are recorded beside the posterior; a finished posterior whose
        record differs from what the card now says is refused rather than reused. Two
        processes never train the same run at once: the second waits and reloads.
        """
        stem = self.stem(run_dir)
        saved, record = self.posterior_path(run_dir), stem.with_suffix(".card.json")
        model_options, train_options = self.hyperparameters(cards)
        hyperparameters = {"model": model_options, "train": train_options}
        run_dir.mkdir(parents=True, exist_ok=True)
        with exclusive_lock(stem.with_suffix(".lock")):
            if saved.exists():
                check_recorded_hyperparameters(record, hyperparameters)
                posterior = load(saved, prior=get_task(self.task).prior, device=device)
                return posterior, posterior.training_record.seconds
            checkpoints = None if self.rounds > 1 else stem.with_suffix(".checkpoints")
            posterior = self.fit(
                device, checkpoint_dir=checkpoints, show_progress=show_progress, cards=cards
            )
            _write_atomically(record, json.dumps(hyperparameters, indent=2, sort_keys=True))
            posterior.save(saved)
        return posterior.to(device), posterior.training_record.seconds


def _write_atomically(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    partial.replace(path)


def check_recorded_hyperparameters(record: Path, hyperparameters: dict) -> None:
    """Raises ValueError if `record` is missing or holds other card hyperparameters than
    `hyperparameters`."""
    run_files = f"{record.parent / record.name.removesuffix('.card.json')}.*"
    try:
        recorded = json.loads(record.read_text())
    except FileNotFoundError:
        raise ValueError(
            f"{record} is missing, so the posterior beside it cannot be checked against the "
            f"task card; delete the run's files ({run_files}) to retrain"
        ) from None
    except json.JSONDecodeError as error:
        raise ValueError(
            f"{record} is not valid JSON ({error}); delete the run's files ({run_files}) to retrain"
        ) from None
    expected = json.loads(json.dumps(hyperparameters))
    if recorded != expected:
        changed = []
        for part, now in expected.items():
            before = recorded.get(part, {})
            changed += [
                f"{part}.{key}: {before.get(key)!r} -> {now.get(key)!r}"
                for key in sorted(now.keys() | before.keys())
                if before.get(key) != now.get(key)
            ]
        raise ValueError(
            f"the posterior beside {record} was trained with other hyperparameters than the "
            f"task card now gives ({'; '.join(changed)}). Delete its files ({run_files}) to "
            "retrain, or pass another --runs and --results"
        )
