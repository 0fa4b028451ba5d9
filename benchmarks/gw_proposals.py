"""Which proposal would make the gravitational-wave reference posterior affordable?

    uv run python benchmarks/gw_proposals.py --threads 2      # injection 1, about 20 minutes
    uv run python benchmarks/gw_proposals.py report           # gw_proposals.md from the rows

`benchmarks/gw.py` builds each reference posterior by defensive importance sampling with the
exact likelihood, to an effective sample size of 5,000. Its cost is set by the efficiency of
the mixture's best proposal, since every sample also needs FMPE's exact log density. This
script measures, on one injection and with the exact likelihood, the importance-sampling
efficiency and log evidence of each candidate proposal:

- NPE, the trained estimator of `benchmarks/gw.py` (FMPE's efficiencies are in
  gw_injections.csv);
- a kernel density of dynesty's weighted samples (`KernelDensityProposal`), at Scott's
  bandwidth and at a half and a quarter of it;
- a neural spline flow fitted to dynesty's weighted samples (`FlowProposal.fit`, kept at its
  best held-out loss);
- the rounds of adaptive importance sampling from NPE (`adapt_flow_proposal`): a flow refitted
  to the tempered weights of each round, with 20,000 and with 100,000 samples a round;
- the same with 100,000 samples a round, where the flow covers the eight parameters besides
  φ_c and φ_c is drawn from its exact conditional posterior (`PhaseConditionalProposal`).

It needs the saved posteriors and dynesty's samples of `benchmarks/gw.py` in the runs folder,
and trains nothing else. Rows go to gw_proposals.csv, one unit per (injection, proposal
family), and a run skips the units already there.
"""

import argparse
from pathlib import Path

import torch
from safetensors.torch import load_file

from fmpe.benchmark import RowLog, Run, provenance
from fmpe.benchmark.measure import markdown_table
from fmpe.benchmark.report import machines_line
from fmpe.diagnostics import (
    FlowProposal,
    ImportanceResult,
    KernelDensityProposal,
    adapt_flow_proposal,
    defensive_importance_sample,
    importance_sample,
)
from fmpe.tasks import get_task

HERE = Path(__file__).parent
BUDGET = 100_000
SAMPLES = 20_000
KERNEL_SCALES = (1.0, 0.5, 0.25)
FIT_STEPS = 1_000
ADAPTIVE_ROUNDS = 8
# Samples per round of the adaptive flow, by family: 20,000 as for the other proposals, and
# 100,000, where the tempered weights keep five times as many distinct samples for each fit.
ADAPTIVE_SAMPLES = {"adaptive": 20_000, "adaptive 100000": 100_000}
# The same, with φ_c drawn from its exact conditional and the flow over the other eight.
PHASE_FAMILY = "phase-conditional adaptive 100000"
FIELDS = (
    "injection",
    "family",
    "proposal",
    "samples",
    "effective_sample_size",
    "efficiency_percent",
    "log_evidence",
    "log_evidence_error",
)


def result_row(injection: int, proposal: str, result: ImportanceResult) -> dict:
    return {
        "injection": injection,
        "proposal": proposal,
        "samples": result.num_samples,
        "effective_sample_size": round(result.effective_sample_size, 1),
        "efficiency_percent": f"{100 * result.sample_efficiency:.3g}",
        "log_evidence": f"{result.log_evidence:.3f}",
        "log_evidence_error": f"{result.log_evidence_error:.3f}",
    }


def measure(task, npe, injection: int, dynesty_file: Path, family: str) -> list[dict]:
    """The rows of one proposal family on one injection."""
    x = task.observation(injection)
    if family == "npe":
        result = importance_sample(npe, SAMPLES, x, task.log_likelihood, task.prior)
        return [result_row(injection, "NPE", result)]
    if family in ADAPTIVE_SAMPLES or family == PHASE_FAMILY:
        phase = family == PHASE_FAMILY
        _, history = adapt_flow_proposal(
            npe,
            x,
            task.log_likelihood,
            task.prior,
            samples=100_000 if phase else ADAPTIVE_SAMPLES[family],
            rounds=ADAPTIVE_ROUNDS,
            proposal_for=task.phase_conditional_proposal if phase else None,
        )
        name = "φ_c-conditional adaptive flow" if phase else "adaptive flow"
        # Round 0 is NPE itself, measured above.
        return [
            result_row(injection, f"{name} from NPE, round {k}", r.result)
            for k, r in enumerate(history)
            if k > 0
        ]
    saved = load_file(str(dynesty_file))
    theta, weights = saved["theta"].float(), saved["log_weights"].exp()
    if family == "kernel":
        rows = []
        for scale in KERNEL_SCALES:
            kernel = KernelDensityProposal(theta, weights, task.prior, bandwidth_scale=scale)
            result = defensive_importance_sample(
                [kernel], SAMPLES, x, task.log_likelihood, task.prior, prior_fraction=0.0
            )
            name = f"kernel density of dynesty's samples, bandwidth × {scale:g}"
            rows.append(result_row(injection, name, result))
        return rows
    flow = FlowProposal.for_samples(task.prior, theta, weights)
    flow.fit(theta, weights, steps=FIT_STEPS)
    result = defensive_importance_sample(
        [flow], SAMPLES, x, task.log_likelihood, task.prior, prior_fraction=0.0
    )
    name = "flow fitted to dynesty's samples"
    return [result_row(injection, name, result)]


FAMILIES = ("npe", "kernel", "flow", *ADAPTIVE_SAMPLES, PHASE_FAMILY)


def write_report(results: Path) -> None:
    rows = RowLog(results / "gw_proposals.csv").rows()
    dynesty = {r["injection"]: r for r in RowLog(results / "gw_dynesty.csv").rows()}
    lines = [
        "# Proposals for the gravitational-wave reference posterior",
        "",
        "Produced by `uv run python benchmarks/gw_proposals.py`; see its docstring. Importance",
        f"sampling with the exact likelihood, {SAMPLES:,} samples per proposal (per round for the",
        "adaptive flow, or as many as the samples column says); the efficiency is ESS / samples.",
        "The reference needs an ESS of 5,000, every sample with FMPE's exact log density.",
        "",
    ]
    for injection in sorted({r["injection"] for r in rows}, key=int):
        nested = dynesty.get(injection)
        evidence = (
            f"dynesty's log Z: {nested['log_evidence']} ± {nested['log_evidence_error']}."
            if nested
            else "No dynesty run."
        )
        lines += [f"## Injection {injection}", "", evidence, ""]
        mine = [r for r in rows if r["injection"] == injection]
        lines += markdown_table(mine, FIELDS[2:])
        lines.append("")
    lines.append(machines_line(rows))
    (results / "gw_proposals.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("step", nargs="?", choices=("measure", "report"), default="measure")
    parser.add_argument("--injection", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0, help="of the trained posteriors")
    parser.add_argument("--runs", type=Path, default=HERE / "runs" / "gw")
    parser.add_argument("--results", type=Path, default=HERE / "results")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.step == "measure":
        task = get_task("gw")
        dynesty_file = (
            args.runs / f"gw_{BUDGET}_seed{args.seed}_dynesty{args.injection}.safetensors"
        )
        experiment = Run("gw", BUDGET, "npe", seed=args.seed)
        if not dynesty_file.exists() or not experiment.posterior_path(args.runs).exists():
            raise SystemExit(
                f"{dynesty_file} or NPE's saved posterior is missing: run benchmarks/gw.py "
                f"first (its dynesty step for injection {args.injection})"
            )
        npe, _ = experiment.train(args.runs, torch.device("cpu"), show_progress=False)
        log = RowLog(args.results / "gw_proposals.csv", FIELDS)
        done = {(r["injection"], r["family"]) for r in log.rows()}
        for family in FAMILIES:
            if (str(args.injection), family) in done:
                continue
            torch.manual_seed(args.seed + args.injection)
            for row in measure(task, npe, args.injection, dynesty_file, family):
                row = {"family": family, **row, **provenance()}
                log.add(row)
                print(row)
    write_report(args.results)


if __name__ == "__main__":
    main()
