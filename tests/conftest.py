"""Hermetic test runs: no AWS or cefmp4 settings leak in from the developer's shell."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cefmp4.config.settings import Settings
from tests.support.app import checkpoint_kind  # noqa: F401  (fixture)
from tests.support.media import *  # noqa: F403  (fixtures)
from tests.support.redis import *  # noqa: F403  (fixtures)
from tests.support.seaweed import *  # noqa: F403  (fixtures)

# Every setting, from the model itself, so a setting added later cannot leak in either.
_APP_VARS = frozenset(name.upper() for name in Settings.model_fields)


@pytest.fixture(autouse=True)
def hermetic_env(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    for name in list(os.environ):
        if name.startswith("AWS_") or name in _APP_VARS:
            monkeypatch.delenv(name)
    empty: Path = tmp_path_factory.mktemp("aws-config")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(empty / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(empty / "credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    # A .env in the developer's working directory must not leak into tests.
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))


# Registered here, in the root conftest, so `scripts/test --crash-iterations N` works
# without naming tests/system on the command line.
def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("cefmp4 system tests")
    group.addoption(
        "--crash-iterations",
        type=int,
        default=20,
        metavar="N",
        help="SIGKILLs dealt by the randomized crash loop (default: %(default)s)",
    )
    group.addoption(
        "--crash-seed",
        type=int,
        default=None,
        metavar="SEED",
        help="seed of the randomized crash loop (default: a fresh one, printed)",
    )
