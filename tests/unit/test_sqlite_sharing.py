"""The embedded store's single-instance lock, and the shared store ``upload`` uses beside
the lock's holder (issue #26 item 3)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cefmp4.checkpoint.sqlite import lock_holder, open_sqlite_store
from cefmp4.runtime.errors import ConfigError


async def test_lock_holder_names_the_instance(tmp_path: Path) -> None:
    assert lock_holder(tmp_path / "never-ran") is None
    async with open_sqlite_store(tmp_path) as owner:
        assert lock_holder(tmp_path) == os.getpid()
        assert await owner.outbox_claim("a", 30) is True
        with pytest.raises(ConfigError, match="another cefmp4 instance"):
            async with open_sqlite_store(tmp_path):
                pass
        async with open_sqlite_store(tmp_path, shared=True) as beside:
            # Shared: it writes through SQLite's own locking, and leaves the outbox to the
            # lock's holder.
            assert await beside.outbox_claim("b", 30) is False
            assert await beside.list_streams() == []
        assert lock_holder(tmp_path) == os.getpid()  # the shared one took no lock
    assert lock_holder(tmp_path) is None
