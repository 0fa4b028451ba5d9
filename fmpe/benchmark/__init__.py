"""The benchmark: task cards, runs of estimators on tasks, their results store, metrics and
reports."""

from fmpe.benchmark import gw_metrics as _gw_metrics  # noqa: F401
from fmpe.benchmark.cards import (
    CardError,
    CardStore,
    TaskCard,
    available_cards,
    load_card,
    shipped_cards,
)
from fmpe.benchmark.experiment import Run
from fmpe.benchmark.measure import (
    float64_log_prob,
    machine_description,
    markdown_table,
    provenance,
    resolve_device,
    timed,
    timestamp,
)
from fmpe.benchmark.results import ResultsStore
from fmpe.benchmark.rowlog import RowLog
from fmpe.benchmark.runner import evaluate, run
from fmpe.benchmark.scoring import METRICS, Scoring, register_metric

__all__ = [
    "METRICS",
    "CardError",
    "CardStore",
    "ResultsStore",
    "Run",
    "RowLog",
    "Scoring",
    "TaskCard",
    "available_cards",
    "evaluate",
    "float64_log_prob",
    "load_card",
    "machine_description",
    "markdown_table",
    "provenance",
    "register_metric",
    "resolve_device",
    "run",
    "shipped_cards",
    "timed",
    "timestamp",
]
