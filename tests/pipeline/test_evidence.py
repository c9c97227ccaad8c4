"""Evidence on the in-memory store (SPEC §2.22): the pipeline signs every metadata document
and records the whole-object CRC64NVME; ``cefmp4 verify``'s verdicts for every kind of
tampering. The servers' own enforcement (Object Lock, SSE, checksums) is shown in
tests/integration/test_evidence_servers.py."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
)

from cefmp4.cli import verify as verify_mod
from cefmp4.cli.verify import BAD_SIGNATURE, MISMATCH, MISSING, OK, UNSIGNED, verify_one
from cefmp4.core.hashing import crc64_b64, crc64nvme
from cefmp4.core.keys import metadata_key
from cefmp4.core.signature import Verdict, canonical_json, check_signature
from cefmp4.runtime.errors import PermanentError
from cefmp4.storage.memory import MemoryObjectStore
from tests.pipeline.conftest import PART, FakeProber, burst, make_settings, metadata, pattern

pytestmark = pytest.mark.usefixtures("real_time")


def write_key(path: Path) -> Ed25519PrivateKey:
    key = Ed25519PrivateKey.generate()
    path.write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    return key


async def _uploaded(
    tmp_path: Path, store: MemoryObjectStore, data: bytes, **settings: Any
) -> tuple[str, Ed25519PrivateKey]:
    watch = tmp_path / "watch"
    watch.mkdir(exist_ok=True)
    key = write_key(tmp_path / "signing.pem")
    conf = make_settings(tmp_path, watch, signing_key_file=str(tmp_path / "signing.pem"),
                         **settings)
    (watch / "cam Ü.mp4").write_bytes(data)
    results = await burst(conf, store, FakeProber())
    [record] = [r for r in results.values() if r is not None]
    return record.key, key


async def test_every_metadata_document_is_signed_over_its_canonical_form(
    tmp_path: Path,
) -> None:
    store = MemoryObjectStore("test-bucket")
    data = pattern(2 * PART + 7)
    video, key = await _uploaded(tmp_path, store, data)
    doc = metadata(store, video)
    assert check_signature(doc, key.public_key()).verdict is Verdict.OK
    # The signature covers everything else in the document, non-ASCII path included.
    assert "cam Ü.mp4" in canonical_json(doc).decode("utf-8")
    # Each part's CRC64NVME is recorded and they combine to the object's (no second read).
    assert [c["crc64nvme"] for c in doc["chunks"]] == [
        f"{crc64nvme(data[c['offset_bytes']:c['offset_bytes'] + c['size_bytes']]):016x}"
        for c in doc["chunks"]
    ]
    assert doc["full_object_checksum"] == {
        "algorithm": "CRC64NVME", "type": "FULL_OBJECT", "value": crc64_b64(crc64nvme(data)),
        "verified_by_store": False,  # this store checks CRC32C parts, not the whole
    }


class FullObjectStore(MemoryObjectStore):
    """A store that verifies a whole-object CRC64NVME, as AWS and SeaweedFS 4.x do."""

    part_checks = "crc64nvme"

    def __init__(self) -> None:
        super().__init__("test-bucket")
        self.whole: list[str] = []

    async def complete_multipart(
        self, key: str, upload_id: str, parts: list[tuple[int, str]], *, crc64nvme_b64: str = ""
    ) -> str:
        self.whole.append(crc64nvme_b64)
        return await super().complete_multipart(key, upload_id, parts,
                                                crc64nvme_b64=crc64nvme_b64)


async def test_a_verifying_store_gets_the_combined_checksum_at_complete(tmp_path: Path) -> None:
    store = FullObjectStore()
    data = pattern(3 * PART + 11, seed=4)
    video, _ = await _uploaded(tmp_path, store, data)
    assert store.whole == [crc64_b64(crc64nvme(data))]
    whole = metadata(store, video)["full_object_checksum"]
    assert whole["value"] == crc64_b64(crc64nvme(data))
    assert whole["verified_by_store"] is True


async def test_the_store_refuses_a_complete_whose_parts_are_not_the_hashed_bytes() -> None:
    """The control: the memory store's Complete really checks the value it is given."""
    store = FullObjectStore()
    body = os.urandom(1000)
    upload_id = await store.create_multipart("k", "video/mp4")
    etag = await store.upload_part("k", upload_id, 1, body, crc64nvme_b64=crc64_b64(
        crc64nvme(body)))
    with pytest.raises(PermanentError, match="BadDigest"):
        await store.complete_multipart("k", upload_id, [(1, etag)],
                                       crc64nvme_b64=crc64_b64(crc64nvme(body) ^ 1))
    with pytest.raises(Exception, match="BadDigest"):  # a part with a wrong CRC64NVME
        await store.upload_part("k", upload_id, 2, body, crc64nvme_b64=crc64_b64(1))


# --- verify's verdicts ----------------------------------------------------------------------


def _tamper_byte(store: MemoryObjectStore, video: str, _meta: str) -> None:
    stored = store.objects[video]
    body = bytearray(stored.body)
    body[len(body) // 2] ^= 0x01
    store.objects[video] = type(stored)(bytes(body), stored.etag, stored.content_type)


def _edit_metadata(store: MemoryObjectStore, meta: str, edit: Any) -> None:
    doc = json.loads(store.objects[meta].body)
    edit(doc)
    stored = store.objects[meta]
    store.objects[meta] = type(stored)(json.dumps(doc).encode(), stored.etag, stored.content_type)


@pytest.mark.parametrize(
    ("tamper", "verdict", "reason"),
    [
        (None, OK, ""),
        (_tamper_byte, MISMATCH, "sha256"),
        (lambda s, v, m: _edit_metadata(s, m, lambda d: d.update(sha256="0" * 64)),
         BAD_SIGNATURE, "changed"),
        (lambda s, v, m: _edit_metadata(s, m, lambda d: d.pop("signature")), UNSIGNED, ""),
        (lambda s, v, m: s.objects.pop(v), MISSING, "video object is missing"),
        (lambda s, v, m: s.objects.pop(m), MISSING, "no metadata"),
    ],
    ids=["untouched", "byte-flipped", "metadata-edited", "signature-removed",
         "object-missing", "metadata-missing"],
)
async def test_verify_verdicts(
    tmp_path: Path, tamper: Any, verdict: str, reason: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(verify_mod, "RANGE", 1024 * 1024)  # many ranges, a few in flight
    store = MemoryObjectStore("test-bucket")
    data = pattern(2 * PART + 333, seed=9)
    video, key = await _uploaded(tmp_path, store, data)
    if tamper is not None:
        tamper(store, video, metadata_key(video))
    store.calls.clear()
    result = await verify_one(store, video, key.public_key())
    assert result.verdict == verdict, result
    assert reason in result.reason
    if verdict in (OK, MISMATCH):
        # The object was read in ranges, never whole.
        assert store.calls["get_range"] == -(-len(data) // (1024 * 1024))
        assert "get_object" not in store.calls or store.calls["get_object"] == 1  # metadata


@pytest.mark.parametrize(("body", "reason"), [
    (b"[" * 200_000, "not JSON"),  # nested past Python's depth: no RecursionError escapes
    (b" " * (16 * 1024 * 1024 + 1), "more than any cefmp4 writes"),  # never read whole
])
async def test_verify_judges_a_hostile_metadata_document_without_reading_it_all(
    tmp_path: Path, body: bytes, reason: str
) -> None:
    store = MemoryObjectStore("test-bucket")
    video, key = await _uploaded(tmp_path, store, pattern(PART + 5))
    await store.put_object(metadata_key(video), body, "application/json")
    store.calls.clear()
    result = await verify_one(store, video, key.public_key())
    assert result.verdict == MISMATCH
    assert reason in result.reason
    assert store.calls.get("get_object", 0) == (0 if len(body) > 16 * 1024 * 1024 else 1)


async def test_verify_judges_a_signed_document_nested_just_under_pythons_depth(
    tmp_path: Path,
) -> None:
    """Parsed, but too deep to serialise again for the signature check (it raised
    RecursionError past every handler, and `verify --all` stopped with no result)."""
    store = MemoryObjectStore("test-bucket")
    video, key = await _uploaded(tmp_path, store, pattern(PART + 5))
    from cefmp4.core.signature import key_id

    sig = {"alg": "ed25519", "key_id": key_id(key.public_key()), "value": "AAAA"}
    deepest = next(d for d in range(3000, 0, -1) if _parses(d))
    for depth in range(deepest, deepest - 40, -1):
        body = json.dumps({"signature": sig, "x": 0}).encode()[:-1] + b',"y":' + (
            b"[" * depth + b"]" * depth) + b"}"
        await store.put_object(metadata_key(video), body, "application/json")
        result = await verify_one(store, video, key.public_key())
        assert result.verdict in (MISMATCH, BAD_SIGNATURE), (depth, result)


def _parses(depth: int) -> bool:
    try:
        json.loads(b"[" * depth + b"]" * depth)
    except RecursionError:
        return False
    return True


async def test_verify_with_another_public_key_is_a_bad_signature(tmp_path: Path) -> None:
    store = MemoryObjectStore("test-bucket")
    video, _ = await _uploaded(tmp_path, store, pattern(PART + 1))
    other = Ed25519PrivateKey.generate().public_key()
    result = await verify_one(store, video, other)
    assert result.verdict == BAD_SIGNATURE
    assert "signed by key" in result.reason


async def test_verify_sees_a_checksum_that_disagrees_with_the_bytes(tmp_path: Path) -> None:
    """Metadata and object agree on size and SHA-256, but the recorded CRC64NVME is not
    theirs: caught even when the document is re-signed by the same key (a tool bug, not
    an attacker)."""
    store = MemoryObjectStore("test-bucket")
    video, key = await _uploaded(tmp_path, store, pattern(PART + 5))
    from cefmp4.core.signature import Signer

    meta = metadata_key(video)
    doc = json.loads(store.objects[meta].body)
    doc["full_object_checksum"]["value"] = base64.b64encode(b"\0" * 8).decode()
    stored = store.objects[meta]
    store.objects[meta] = type(stored)(
        json.dumps(Signer(key).sign(doc)).encode(), stored.etag, stored.content_type)
    result = await verify_one(store, video, key.public_key())
    assert result.verdict == MISMATCH
    assert "CRC64NVME" in result.reason
