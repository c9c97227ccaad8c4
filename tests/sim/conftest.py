"""Options of the simulator's tests (here, not in the root conftest: they only mean
something with tests/sim on the command line).

    scripts/test tests/sim                       the CI seeds (CI_SEEDS, REGRESSION_SEEDS,
                                                 and KNOWN_HOLES as strict xfails)
    scripts/test tests/sim --sim-seeds 10000     a soak: seeds 0..9999
    scripts/test tests/sim -k replay --sim-seed 1234    one seed, with its full report
"""

from __future__ import annotations

import pytest

from tests.sim.known import KNOWN_HOLES, REGRESSION_SEEDS

CI_SEEDS = 150  # about a minute of CPU; under 3 minutes on a loaded 2-core machine


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("cefmp4 simulator")
    group.addoption("--sim-seeds", type=int, default=CI_SEEDS, metavar="N",
                    help="run simulator seeds FIRST..FIRST+N-1 (default: %(default)s)")
    group.addoption("--sim-first", type=int, default=0, metavar="FIRST",
                    help="first simulator seed (default: %(default)s)")
    group.addoption("--sim-seed", type=int, default=None, metavar="SEED",
                    help="replay this one simulator seed (test id replay-SEED)")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "sim_seed" not in metafunc.fixturenames:
        return
    config = metafunc.config
    replay = config.getoption("--sim-seed")
    if replay is not None:
        metafunc.parametrize("sim_seed", [replay], ids=[f"replay-{replay}"])
        return
    first = config.getoption("--sim-first")
    drawn = range(first, first + config.getoption("--sim-seeds"))
    extra = sorted({*REGRESSION_SEEDS, *KNOWN_HOLES})  # (a hole's seed runs as an xfail)
    seeds = [*drawn, *(s for s in extra if s not in drawn)]
    metafunc.parametrize("sim_seed", list(seeds), ids=[f"seed-{s}" for s in seeds])
