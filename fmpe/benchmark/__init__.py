"""The benchmark: task cards, runs of estimators on tasks, their results store, metrics and
reports.

The cards, `Run` and `run` load on first use: they import the estimators (and Lightning),
which the scoring workers and the scripts that only read results do not need.
"""

from fmpe.benchmark import gw_metrics as _gw_metrics  # noqa: F401
from fmpe.benchmark.evaluation import evaluate
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
from fmpe.benchmark.scoring import METRICS, Scoring, register_metric
from fmpe.lazy import lazy_attributes

_LAZY = {
    "CardError": "fmpe.benchmark.cards",
    "CardStore": "fmpe.benchmark.cards",
    "TaskCard": "fmpe.benchmark.cards",
    "available_cards": "fmpe.benchmark.cards",
    "load_card": "fmpe.benchmark.cards",
    "shipped_cards": "fmpe.benchmark.cards",
    "Run": "fmpe.benchmark.experiment",
    "run": "fmpe.benchmark.runner",
}

__getattr__, __dir__ = lazy_attributes(__name__, globals(), _LAZY)


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
