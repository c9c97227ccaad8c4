"""Which integrity check each part carries, and what its record keeps (SPEC §2.7)."""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

import crc32c
import pytest

from cefmp4.checkpoint import PartRecord
from cefmp4.config.settings import Settings
from cefmp4.core.hashing import (
    PartDigest,
    is_md5_record,
    record_crc64nvme,
    record_past,
    same_bytes,
)
from cefmp4.core.verified import Digest, stale_parts
from cefmp4.storage import PartBody
from cefmp4.storage.memory import MemoryObjectStore
from cefmp4.streams.recheck import needs_md5
from cefmp4.streams.source import FileRange, digest_range
from tests.pipeline.conftest import PART, FakeProber, burst, metadata, pattern, videos


class Recording(MemoryObjectStore):
    """Remembers which checks each UploadPart carried."""

    def __init__(self, checks: str) -> None:
        super().__init__("test-bucket")
        self.part_checks = checks  # type: ignore[assignment]
        self.sent: list[tuple[bool, bool]] = []  # (md5 given, crc32c given)

    async def upload_part(
        self, key: str, upload_id: str, part_number: int, body: PartBody,
        md5_b64: str = "", **check: str,
    ) -> str:
        self.sent.append((bool(md5_b64), bool(check.get("crc32c_b64"))))
        return await super().upload_part(key, upload_id, part_number, body, md5_b64, **check)


@pytest.mark.parametrize("checks", ["crc32c", "md5"])
async def test_parts_carry_the_check_the_store_verifies(
    settings: Settings, watch: Path, prober: FakeProber, checks: str
) -> None:
    store = Recording(checks)
    data = pattern(2 * PART + 77)
    (watch / "cam.mp4").write_bytes(data)
    await burst(settings, store, prober)
    assert list(videos(store).values()) == [data]
    # MD5 is computed only for a Content-MD5 store; the CRC32C always (the record's digest).
    assert store.sent == [(checks == "md5", True)] * 3
    [key] = videos(store)
    chunks = metadata(store, key)["chunks"]
    offsets = [0, PART, 2 * PART, len(data)]
    for chunk, start, end in zip(chunks, offsets, offsets[1:], strict=False):
        assert chunk["crc32c"] == f"{crc32c.crc32c(data[start:end]):08x}"
        assert chunk["etag"] == hashlib.md5(data[start:end]).hexdigest()


def test_a_part_digest_compares_with_a_record_of_its_own_kind(tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 5)
    path = tmp_path / "f"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        sha = hashlib.sha256()
        fast = digest_range(fd, 0, len(data), sha)
        full = digest_range(fd, 0, len(data), md5=True)
    finally:
        os.close(fd)
    assert sha.hexdigest() == hashlib.sha256(data).hexdigest()
    assert fast.md5 is None
    assert full.md5 == hashlib.md5(data).digest()
    assert fast.crc32c == full.crc32c == crc32c.crc32c(data)
    assert fast.crc32c_b64 == base64.b64encode(crc32c.crc32c(data).to_bytes(4, "big")).decode()
    assert same_bytes(fast.record, fast)
    assert not is_md5_record(fast.record)
    legacy = hashlib.md5(data).hexdigest()  # a record written before CRC32C
    assert is_md5_record(legacy)
    assert same_bytes(legacy, full)
    assert not same_bytes(legacy, fast)  # unknown without the MD5: counts as changed
    assert not same_bytes(fast.record, PartDigest(fast.crc32c ^ 1))


@pytest.mark.parametrize("past", [1, 4 * 1024 * 1024 - 1, 4 * 1024 * 1024, 4 * 1024 * 1024 + 7])
def test_part_1s_body_past_its_header_is_digested_in_the_same_read(
    tmp_path: Path, past: int
) -> None:
    """Across block boundaries (4 MiB blocks), and the record keeps it beside the CRCs: it
    still matches a pass that computes none (the verify pass, an older cefmp4)."""
    data = os.urandom(9 * 1024 * 1024 + 5)
    path = tmp_path / "f"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        digest = digest_range(fd, 0, len(data), past=past)
        plain = digest_range(fd, 0, len(data))
    finally:
        os.close(fd)
    assert digest.past == (past, crc32c.crc32c(data[past:]))
    assert digest.crc32c == plain.crc32c
    assert digest.crc64nvme == plain.crc64nvme
    assert record_past(digest.record) == digest.past
    assert same_bytes(digest.record, plain)
    assert record_crc64nvme(digest.record) == plain.crc64nvme


def _digest(parts: list[tuple[int, int, PartDigest]]) -> Digest:
    from cefmp4.core.hashing import FileDigest, RangeDigest

    ranges = [RangeDigest(n, (n - 1) * PART, size, d) for n, size, d in parts]
    return Digest((0, 0, 0), True, FileDigest(sum(p[1] for p in parts), "0" * 64, ranges), 0)


def test_verification_finds_changed_parts_by_crc32c_and_by_legacy_md5() -> None:
    a, b = PartDigest(1, hashlib.md5(b"a").digest()), PartDigest(2, hashlib.md5(b"b").digest())
    records = {
        1: PartRecord(1, 0, PART, "e1", a.record, 0.0),
        2: PartRecord(2, PART, PART, "e2", b.md5_hex, 0.0),  # recorded with its MD5
    }
    assert needs_md5(records)
    assert stale_parts(_digest([(1, PART, a), (2, PART, b)]), records) == []
    changed = PartDigest(3, hashlib.md5(b"c").digest())
    assert [d.part_number for d in stale_parts(_digest([(1, PART, changed), (2, PART, b)]),
                                               records)] == [1]
    assert [d.part_number for d in stale_parts(_digest([(1, PART, a), (2, PART, changed)]),
                                               records)] == [2]
    assert not needs_md5({1: records[1]})


def test_file_range_reads_from_the_page_cache_without_blocking(tmp_path: Path) -> None:
    data = os.urandom(2 * 1024 * 1024 + 3)
    path = tmp_path / "f"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        body = FileRange(fd, 10, len(data) - 10)
        got = bytearray()
        while (chunk := body.read_cached(1 << 20)) is not None:
            got += chunk
        assert bytes(got) == data[10:]  # just written: every byte is cached
        assert body.tell() == len(data) - 10
        assert body.read_cached(1 << 20) is None  # nothing left
    finally:
        os.close(fd)


