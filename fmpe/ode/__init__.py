"""Solving the flow's ODE: one entry point, `solve`, and a table of solvers."""

from fmpe.ode.solvers import (
    SOLVERS,
    BatchField,
    Field,
    RowField,
    Solution,
    Solver,
    SolverSettings,
    register_solver,
    sampling_overrides,
    solve,
    standard_normal_log_prob,
)

__all__ = [
    "SOLVERS",
    "BatchField",
    "Field",
    "RowField",
    "Solution",
    "Solver",
    "SolverSettings",
    "register_solver",
    "sampling_overrides",
    "solve",
    "standard_normal_log_prob",
]
