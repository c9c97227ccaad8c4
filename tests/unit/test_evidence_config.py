"""The evidence settings and values (SPEC §2.22): bad combinations are one line naming the
setting (exit 2, through the real console script); the retention and SSE arguments; the KMS
key id as logs show it; CRC-64/NVME against a bit-by-bit reference and its combination."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    BestAvailableEncryption,
    Encoding,
    NoEncryption,
    PrivateFormat,
)

from cefmp4.checkpoint import PartRecord
from cefmp4.core.hashing import (
    PartDigest,
    combined_crc64nvme,
    crc64nvme,
    record_crc32c,
    record_crc64nvme,
    same_bytes,
)
from cefmp4.storage.protection import ObjectProtection, is_bookkeeping, mask_kms_key_id

CEFMP4 = str(Path(sys.executable).with_name("cefmp4"))


def _run(tmp_path: Path, *args: str, **settings: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "S3_", "REDIS_", "PROM_", "SIGNING_", "CEFMP4"))}
    env.update(
        WATCH_DIR=str(tmp_path / "watch"), STATE_DIR=str(tmp_path / "state"),
        S3_ENDPOINT_URL="http://127.0.0.1:9",  # nothing listens: only configuration can end it
        S3_ACCESS_KEY_ID="k", S3_SECRET_ACCESS_KEY="s", PROM_PORT="0", LOG_FORMAT="json",
    )
    env.update(settings)
    return subprocess.run([CEFMP4, *(args or ("run",))], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=30, check=False)


def _one_line(result: subprocess.CompletedProcess[str], name: str) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"cefmp4: configuration error: {name}:"), line
    return line


def _pem(path: Path, key: object, password: bytes | None = None) -> str:
    encryption = BestAvailableEncryption(password) if password else NoEncryption()
    path.write_bytes(key.private_bytes(  # type: ignore[attr-defined]
        Encoding.PEM, PrivateFormat.PKCS8, encryption))
    return str(path)


@pytest.mark.parametrize(
    ("settings", "name"),
    [
        ({"S3_OBJECT_LOCK_MODE": "GOVERNANCE"}, "S3_OBJECT_LOCK_RETAIN_DAYS"),
        ({"S3_OBJECT_LOCK_RETAIN_DAYS": "30"}, "S3_OBJECT_LOCK_MODE"),
        ({"S3_OBJECT_LOCK_MODE": "FOREVER", "S3_OBJECT_LOCK_RETAIN_DAYS": "1"},
         "S3_OBJECT_LOCK_MODE"),
        ({"S3_OBJECT_LOCK_MODE": "COMPLIANCE", "S3_OBJECT_LOCK_RETAIN_DAYS": "0"},
         "S3_OBJECT_LOCK_RETAIN_DAYS"),
        ({"S3_OBJECT_LOCK_MODE": "COMPLIANCE", "S3_OBJECT_LOCK_RETAIN_DAYS": "1.5"},
         "S3_OBJECT_LOCK_RETAIN_DAYS"),
        ({"S3_OBJECT_LOCK_LEGAL_HOLD": "maybe"}, "S3_OBJECT_LOCK_LEGAL_HOLD"),
        ({"S3_SSE": "DES"}, "S3_SSE"),
        ({"S3_SSE": "AES256", "S3_SSE_KMS_KEY_ID": "alias/cams"}, "S3_SSE"),
        ({"S3_FULL_OBJECT_CHECKSUM": "always"}, "S3_FULL_OBJECT_CHECKSUM"),
        ({"SIGNING_KEY_FILE": "/nonexistent/key.pem"}, "SIGNING_KEY_FILE"),
        ({"SIGNING_KEY_FILE": "/etc/hostname"}, "SIGNING_KEY_FILE"),
    ],
)
def test_bad_evidence_settings_are_one_line(
    tmp_path: Path, settings: dict[str, str], name: str
) -> None:
    _one_line(_run(tmp_path, **settings), name)


@pytest.mark.parametrize("kind", ["ecdsa", "encrypted", "directory"])
def test_a_signing_key_that_is_not_a_plain_ed25519_pem_is_one_line(
    tmp_path: Path, kind: str
) -> None:
    if kind == "ecdsa":
        path = _pem(tmp_path / "ec.pem", generate_private_key(SECP256R1()))
    elif kind == "encrypted":
        path = _pem(tmp_path / "enc.pem", Ed25519PrivateKey.generate(), b"pw")
    else:
        path = str(tmp_path)
    line = _one_line(_run(tmp_path, SIGNING_KEY_FILE=path), "SIGNING_KEY_FILE")
    assert {"ecdsa": "not an Ed25519 key", "encrypted": "encrypted",
            "directory": "not a regular file"}[kind] in line


def test_verify_without_a_public_key_or_keys_is_one_line(tmp_path: Path) -> None:
    _one_line(_run(tmp_path, "verify", "--all"), "--public-key")
    key = _pem(tmp_path / "k.pem", Ed25519PrivateKey.generate())
    _one_line(_run(tmp_path, "verify", SIGNING_KEY_FILE=key), "verify")
    _one_line(_run(tmp_path, "verify", "--all", "--public-key", "/etc/hostname"), "--public-key")


def test_retention_is_set_from_the_time_of_writing() -> None:
    p = ObjectProtection(lock_mode="COMPLIANCE", retain_days=30, legal_hold=True, sse="AES256")
    now = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
    video = p.create_args("streams/s/cam.mp4", now)
    assert video["ObjectLockMode"] == "COMPLIANCE"
    # A video's upload starts before its recording ends: a day more than the days.
    assert video["ObjectLockRetainUntilDate"] == datetime(2026, 2, 1, tzinfo=UTC)
    assert video["ObjectLockLegalHoldStatus"] == "ON"
    assert video["ServerSideEncryption"] == "AES256"
    meta = p.put_args("streams/s/cam.mp4.metadata.json", now)
    assert meta["ObjectLockRetainUntilDate"] == datetime(2026, 1, 31, tzinfo=UTC)
    # cefmp4's own bookkeeping is deleted when its recording is done: encrypted, not locked.
    for key in ("streams/.cefmp4/tail/s/1", "streams/.cefmp4-check/x"):
        assert is_bookkeeping(key)
        assert p.put_args(key, now) == {"ServerSideEncryption": "AES256"}
    assert not is_bookkeeping("streams/s/cefmp4/cam.mp4")
    assert ObjectProtection().create_args("k", now) == {}
    kms = ObjectProtection(sse="aws:kms", kms_key_id="alias/cams").put_args("k", now)
    assert kms == {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": "alias/cams"}
    assert now + 30 * 86400 < p.retain_until(now, multipart=True).timestamp() - 86399  # type: ignore[union-attr]
    assert p.retain_until(now, multipart=False) == datetime.fromtimestamp(now, UTC) + timedelta(
        days=30)


def test_a_bad_kms_key_id_is_not_repeated(tmp_path: Path) -> None:
    line = _one_line(_run(tmp_path, S3_SSE="aws:kms",
                          S3_SSE_KMS_KEY_ID="arn:aws:kms:eu-west-1:123456789012:key/a b"),
                     "S3_SSE_KMS_KEY_ID")
    assert "123456789012" not in line


def test_a_kms_arn_is_shown_without_its_account() -> None:
    arn = "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    shown = mask_kms_key_id(arn)
    assert "123456789012" not in shown
    assert "1234abcd-12ab" not in shown
    assert shown == "arn:aws:kms:eu-west-1:********9012:key/1234abcd…"
    assert mask_kms_key_id("alias/cams") == "alias/cams"
    assert mask_kms_key_id("1234abcd-12ab-34cd-56ef-1234567890ab").startswith("1234abcd")


def _crc64nvme_bitwise(data: bytes) -> int:
    """CRC-64/NVME by its definition (reflected polynomial 0x9A6C9329AC4BC9B5, init and
    xorout all ones), one bit at a time: the reference awscrt is checked against."""
    crc = 0xFFFFFFFFFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x9A6C9329AC4BC9B5 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFFFFFFFFFF


def test_crc64nvme_is_the_catalogued_crc() -> None:
    assert crc64nvme(b"123456789") == 0xAE8B14860A799888  # the CRC catalogue's check value
    data = os.urandom(4099)
    assert crc64nvme(data) == _crc64nvme_bitwise(data)
    assert crc64nvme(data[1000:], crc64nvme(data[:1000])) == crc64nvme(data)


def test_parts_combine_to_the_crc64nvme_of_the_whole() -> None:
    pieces = [os.urandom(n) for n in (5000, 1, 77_777, 3)]
    parts, offset = [], 0
    for number, piece in enumerate(pieces, 1):
        digest = PartDigest(crc32c=number, crc64nvme=crc64nvme(piece))
        parts.append(PartRecord(number, offset, len(piece), "e", digest.record, 0.0))
        offset += len(piece)
    assert combined_crc64nvme(parts) == _crc64nvme_bitwise(b"".join(pieces))
    # A part recorded without one (before the checksum, or adopted by its MD5): unknown.
    old = PartRecord(5, offset, 1, "e", "crc32c:0000abcd", 0.0)
    assert combined_crc64nvme([*parts, old]) is None
    # A record is input: a CRC64NVME not of exactly 16 hex digits proves nothing (a sign or
    # a 17th digit made the combination raise at every Complete).
    for hostile in ("-1", "f" * 17, "0x00000000000001", "0000_00000000000", "+" + "0" * 15,
                    "0" * 15 + "G"):
        odd = PartRecord(5, offset, 1, "e", f"crc32c:0000abcd;crc64nvme:{hostile}", 0.0)
        assert record_crc64nvme(odd.md5) is None
        assert combined_crc64nvme([*parts, odd]) is None


def test_records_with_and_without_the_crc64nvme_compare_by_what_both_have() -> None:
    now = PartDigest(crc32c=0xABCD, crc64nvme=42)
    assert now.record == "crc32c:0000abcd;crc64nvme:000000000000002a"
    assert record_crc32c(now.record) == "0000abcd"
    assert record_crc64nvme(now.record) == 42
    assert same_bytes(now.record, now)
    assert same_bytes("crc32c:0000abcd", now)  # a checkpoint from before
    assert not same_bytes("crc32c:0000abcd;crc64nvme:000000000000002b", now)
    assert not same_bytes("crc32c:0000abce;crc64nvme:000000000000002a", now)


def test_the_evidence_policy_grants_what_cefmp4_calls_and_no_delete_or_abort() -> None:
    import json

    policy = json.loads((Path(__file__).parents[2] / "deploy/iam/evidence-policy.json")
                        .read_text())
    statements = policy["Statement"]
    allowed = {a for s in statements if s["Effect"] == "Allow"
               and not s.get("Resource", "").endswith("/PREFIX.cefmp4/*") for a in s["Action"]}
    denied = {a for s in statements if s["Effect"] == "Deny"
              and "Condition" not in s for a in s["Action"]}
    # Deletes only of cefmp4's own bookkeeping (tail segments, salvage markers: never locked).
    [own] = [s for s in statements if s["Effect"] == "Allow" and "s3:DeleteObject" in s["Action"]]
    assert own["Resource"] == "arn:aws:s3:::BUCKET/PREFIX.cefmp4/*"
    # Every S3 call of run/upload/verify/check with the evidence settings (PutObject covers
    # CreateMultipartUpload, UploadPart, CompleteMultipartUpload; GetObject HeadObject).
    assert {"s3:ListBucket", "s3:ListBucketMultipartUploads", "s3:GetBucketObjectLockConfiguration",
            "s3:PutObject", "s3:GetObject", "s3:ListMultipartUploadParts",
            "s3:PutObjectRetention", "s3:PutObjectLegalHold"} <= allowed
    never = {"s3:AbortMultipartUpload", "s3:DeleteObject", "s3:DeleteObjectVersion",
             "s3:BypassGovernanceRetention"}
    assert not never & allowed
    assert never <= denied
