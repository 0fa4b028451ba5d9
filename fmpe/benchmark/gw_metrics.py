"""The gw task's benchmark metrics, which need its exact likelihood and parameter names."""

from fmpe.benchmark.scoring import Scoring, register_metric
from fmpe.tasks.gw import GWTask


def _gw_task(s: Scoring) -> GWTask:
    if not isinstance(s.task, GWTask):
        raise ValueError(f"this metric needs the gw task, got {s.task.name!r}")
    return s.task


def importance_sampling(s: Scoring) -> dict[str, float]:
    """One importance sampling of the exact posterior, with the posterior as the proposal
    and as many proposal samples as were scored: its efficiency n_eff / N, log Z and the
    standard error of log Z."""
    result = s.posterior.importance_sample(len(s.samples), s.x, _gw_task(s).log_likelihood)
    return {
        "is_efficiency": result.sample_efficiency,
        "is_log_evidence": result.log_evidence,
        "is_log_evidence_error": result.log_evidence_error,
    }


def credible_levels(s: Scoring) -> dict[str, float]:
    """Per parameter, the share of posterior samples below its true value: uniform over
    observations for a calibrated posterior (the P–P plot's input)."""
    task = _gw_task(s)
    below = (s.samples < task.true_parameters(s.observation)).double().mean(0)
    return {f"credible_level_{n}": float(b) for n, b in zip(task.parameter_names, below)}


register_metric("importance_sampling", importance_sampling)
register_metric("credible_levels", credible_levels)
