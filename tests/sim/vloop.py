"""Moved to tests/support/vloop.py (the pipeline tests run on it too); re-exported here."""

from tests.support.vloop import (
    EPOCH,
    REAL_BUDGET_S,
    STEP_COST,
    SimulationDeadlock,
    SimulationStuck,
    VirtualLoop,
    serial,
)

__all__ = [
    "EPOCH",
    "REAL_BUDGET_S",
    "STEP_COST",
    "SimulationDeadlock",
    "SimulationStuck",
    "VirtualLoop",
    "serial",
]
