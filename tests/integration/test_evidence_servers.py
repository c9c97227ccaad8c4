"""Evidence on real servers (SPEC §2.22): what moto and SeaweedFS do with Object Lock, legal
hold, SSE and the whole-object checksum that cefmp4 sends, each next to a control that shows
the server really enforces what the test relies on (a locked version cannot be deleted, a
bucket without Object Lock refuses lock headers, a wrong checksum is refused). What each
server does is written down in docs/s3-compatibility.md ("Evidence")."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError  # type: ignore[import-untyped]
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from cefmp4.core.hashing import crc64_b64, crc64nvme
from cefmp4.core.keys import metadata_key
from cefmp4.runtime.errors import PermanentError
from cefmp4.storage.protection import ObjectProtection
from cefmp4.storage.s3 import open_s3_store
from tests.support.app import make_settings
from tests.support.moto import MotoS3, moto_s3
from tests.support.proc import run_cli, settings_env
from tests.support.seaweed import SeaweedS3

__all__ = ["moto_s3"]  # a fixture, used by name

pytestmark = pytest.mark.timeout(180)
MiB = 1024 * 1024
ARN = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"


def _bucket(server: Any, *, object_lock: bool) -> str:
    name = f"ev-{uuid.uuid4().hex[:12]}"
    client = server.boto_client()
    try:
        if object_lock:
            client.create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
        else:
            client.create_bucket(Bucket=name)
    finally:
        client.close()
    return name


def _keys(tmp_path: Path) -> tuple[Path, Path]:
    key = Ed25519PrivateKey.generate()
    private, public = tmp_path / "signing.pem", tmp_path / "public.pem"
    private.write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(
        Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    return private, public


def _env(tmp_path: Path, server: Any, bucket: str, **settings: Any) -> dict[str, str]:
    conf = make_settings(tmp_path=tmp_path, s3=server, bucket=bucket, **settings)
    return settings_env(conf)


def _md5(body: bytes) -> str:
    return base64.b64encode(hashlib.md5(body).digest()).decode()


def _upload(tmp_path: Path, env: dict[str, str], *names: str) -> dict[str, bytes]:
    watch = Path(env["WATCH_DIR"])
    files = {name: os.urandom(11 * MiB) if name != "empty.mp4" else b"" for name in names}
    for name, data in files.items():
        (watch / name).write_bytes(data)
    result = run_cli(["upload", *(str(watch / n) for n in names)], env)
    assert result.returncode == 0, result.stdout + result.stderr
    return files


def _key_of(client: Any, bucket: str, name: str) -> str:
    keys = [str(o["Key"]) for o in client.list_objects_v2(Bucket=bucket)["Contents"]]
    [key] = [k for k in keys if k.endswith(f"/{name}")]
    return key


def _assert_locked(client: Any, bucket: str, key: str, *, days: int, legal_hold: bool) -> None:
    """The object carries GOVERNANCE retention (and legal hold), and the server enforces
    it: its version cannot be deleted (the control)."""
    head = client.head_object(Bucket=bucket, Key=key)
    assert head["ObjectLockMode"] == "GOVERNANCE"
    until = head["ObjectLockRetainUntilDate"]
    assert until >= datetime.now(UTC) + timedelta(days=days) - timedelta(minutes=5)
    assert head.get("ObjectLockLegalHoldStatus") == ("ON" if legal_hold else None) or (
        not legal_hold and head.get("ObjectLockLegalHoldStatus") in (None, "OFF"))
    with pytest.raises(ClientError, match="AccessDenied"):
        client.delete_object(Bucket=bucket, Key=key, VersionId=head["VersionId"])


# --- moto -----------------------------------------------------------------------------------


def test_moto_a_bucket_without_object_lock_is_a_configuration_error(
    tmp_path: Path, moto_s3: MotoS3
) -> None:
    bucket = _bucket(moto_s3, object_lock=False)
    client = moto_s3.boto_client()
    try:  # the control: this bucket refuses lock headers; a fallback would drop them
        with pytest.raises(ClientError, match="InvalidRequest"):
            client.put_object(
                Bucket=bucket, Key="x", Body=b"x", ContentMD5=_md5(b"x"),
                ObjectLockMode="GOVERNANCE",
                ObjectLockRetainUntilDate=datetime.now(UTC) + timedelta(days=1))
    finally:
        client.close()
    env = _env(tmp_path, moto_s3, bucket, s3_object_lock_mode="GOVERNANCE",
               s3_object_lock_retain_days=1)
    (Path(env["WATCH_DIR"]) / "a.mp4").write_bytes(b"x" * 100)
    result = run_cli(["upload", str(Path(env["WATCH_DIR"]) / "a.mp4")], env)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    # One line of its own (beside the JSON log events of the start-up before it).
    lines = [line for line in result.stderr.splitlines() if not line.startswith("{")]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("cefmp4: configuration error: S3_OBJECT_LOCK_MODE:")
    assert "no Object Lock" in lines[0]
    checked = run_cli(["check"], env)
    assert checked.returncode != 0
    assert "S3_OBJECT_LOCK_MODE" in checked.stdout + checked.stderr
    # Nothing was written: no silent downgrade.
    client = moto_s3.boto_client()
    try:
        assert client.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0
    finally:
        client.close()


def test_moto_locks_encrypts_and_signs_what_cefmp4_writes(
    tmp_path: Path, moto_s3: MotoS3
) -> None:
    bucket = _bucket(moto_s3, object_lock=True)
    private, public = _keys(tmp_path)
    env = _env(tmp_path, moto_s3, bucket, s3_object_lock_mode="GOVERNANCE",
               s3_object_lock_retain_days=2, s3_object_lock_legal_hold=True,
               s3_sse="aws:kms", s3_sse_kms_key_id=ARN, signing_key_file=str(private))
    files = _upload(tmp_path, env, "cam.mp4", "empty.mp4")
    client = moto_s3.boto_client()
    try:
        video, empty = _key_of(client, bucket, "cam.mp4"), _key_of(client, bucket, "empty.mp4")
        # PutObject (metadata, the empty video): retention, legal hold and SSE-KMS on the
        # object moto stored, with its enforcement as the control.
        for key in (metadata_key(video), empty, metadata_key(empty)):
            _assert_locked(client, bucket, key, days=2, legal_hold=True)
            head = client.head_object(Bucket=bucket, Key=key)
            assert head["ServerSideEncryption"] == "aws:kms"
            assert head["SSEKMSKeyId"] == ARN
        # The multipart video: SSE applied; moto drops Object Lock headers of
        # CreateMultipartUpload (docs/s3-compatibility.md), SeaweedFS keeps them (below).
        head = client.head_object(Bucket=bucket, Key=video)
        assert head["ServerSideEncryption"] == "aws:kms"
        assert "ObjectLockMode" not in head  # moto's gap, pinned: a moto that fixes it fails
        body = client.get_object(Bucket=bucket, Key=video)["Body"].read()
        assert body == files["cam.mp4"]
        doc = json.loads(client.get_object(Bucket=bucket, Key=metadata_key(video))["Body"].read())
        assert doc["signature"]["alg"] == "ed25519"
        assert doc["object_lock"]["mode"] == "GOVERNANCE"
        assert doc["encryption"]["kms_key_id"].startswith("arn:aws:kms:us-east-1:********9012:")
    finally:
        client.close()
    verified = run_cli(["verify", "--all", "--public-key", str(public)], env)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    lines = verified.stdout.splitlines()
    assert sorted(line.split()[0] for line in lines[:-1]) == ["ok", "ok"]
    assert lines[-1] == "verified 2 object(s): 2 ok"


async def test_moto_gets_the_headers_at_create_and_stores_the_crc64nvme_it_computes(
    tmp_path: Path, moto_s3: MotoS3
) -> None:
    """The store level on moto: the lock and checksum headers go out on
    CreateMultipartUpload itself (never a later call), and moto's own CRC64NVME of the
    completed object equals the one cefmp4 combined from its parts' values."""
    bucket = _bucket(moto_s3, object_lock=True)
    protection = ObjectProtection(lock_mode="COMPLIANCE", retain_days=1, legal_hold=True,
                                  sse="AES256")
    sent: list[tuple[str, dict[str, str]]] = []
    parts = [os.urandom(5 * MiB), os.urandom(5 * MiB), os.urandom(123)]
    async with open_s3_store(
        bucket=bucket, endpoint_url=moto_s3.endpoint_url, access_key_id="test",
        secret_access_key="test", region="us-east-1", protection=protection,
        checksum="crc64nvme",  # moto does not verify it (below): forced for this test
    ) as store:
        store._client.meta.events.register(
            "before-send.s3.*",
            lambda request, **kw: sent.append((kw["event_name"], {
                k.lower(): v.decode() if isinstance(v, bytes) else str(v)
                for k, v in request.headers.items()})))
        key = "streams/s1/cam.mp4"
        upload_id = await store.create_multipart(key, "video/mp4")
        etags = [
            await store.upload_part(key, upload_id, n, body, _md5(body),
                                    crc64nvme_b64=crc64_b64(crc64nvme(body)))
            for n, body in enumerate(parts, 1)
        ]
        whole = crc64_b64(crc64nvme(b"".join(parts)))
        await store.complete_multipart(key, upload_id, list(enumerate(etags, 1)),
                                       crc64nvme_b64=whole)
    [(_, create)] = [s for s in sent if s[0].endswith("CreateMultipartUpload")]
    assert create["x-amz-object-lock-mode"] == "COMPLIANCE"
    assert create["x-amz-object-lock-legal-hold"] == "ON"
    assert "x-amz-object-lock-retain-until-date" in create
    assert create["x-amz-server-side-encryption"] == "AES256"
    assert create["x-amz-checksum-algorithm"] == "CRC64NVME"
    assert create["x-amz-checksum-type"] == "FULL_OBJECT"
    calls = [name.rsplit(".", 1)[-1] for name, _ in sent]
    assert not {"PutObjectRetention", "PutObjectLegalHold"} & set(calls)  # never afterwards
    client = moto_s3.boto_client()
    try:
        head = client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
        assert head["ChecksumCRC64NVME"] == whole
        assert head["ChecksumType"] == "FULL_OBJECT"
    finally:
        client.close()


async def test_moto_does_not_verify_crc64nvme_so_auto_does_not_claim_it(
    tmp_path: Path, moto_s3: MotoS3
) -> None:
    bucket = _bucket(moto_s3, object_lock=False)
    client = moto_s3.boto_client()
    try:  # the control: moto takes a part whose CRC64NVME is wrong
        upload_id = client.create_multipart_upload(
            Bucket=bucket, Key="k", ChecksumAlgorithm="CRC64NVME", ChecksumType="FULL_OBJECT",
        )["UploadId"]
        client.upload_part(Bucket=bucket, Key="k", UploadId=upload_id, PartNumber=1,
                           Body=b"abc", ChecksumCRC64NVME=crc64_b64(1),
                           ChecksumAlgorithm="CRC64NVME")
        client.abort_multipart_upload(Bucket=bucket, Key="k", UploadId=upload_id)
    finally:
        client.close()
    async with open_s3_store(
        bucket=bucket, endpoint_url=moto_s3.endpoint_url, access_key_id="test",
        secret_access_key="test", region="us-east-1", probe_prefix="streams/",
        full_object="auto",
    ) as store:
        assert await store.part_checksum() == "md5"


# --- SeaweedFS ------------------------------------------------------------------------------


def test_seaweedfs_locks_a_multipart_video_from_its_creation(
    tmp_path: Path, s3_server: SeaweedS3
) -> None:
    bucket = _bucket(s3_server, object_lock=True)
    private, public = _keys(tmp_path)
    env = _env(tmp_path, s3_server, bucket, s3_object_lock_mode="GOVERNANCE",
               s3_object_lock_retain_days=3, s3_object_lock_legal_hold=True, s3_sse="AES256",
               s3_full_object_checksum="auto", signing_key_file=str(private))
    files = _upload(tmp_path, env, "cam.mp4")
    client = s3_server.boto_client()
    try:
        video = _key_of(client, bucket, "cam.mp4")
        for key in (video, metadata_key(video)):
            _assert_locked(client, bucket, key, days=3, legal_hold=True)
            assert client.head_object(Bucket=bucket, Key=key)["ServerSideEncryption"] == "AES256"
        # Retain-until of the video: at least completion + days (set at Create + 1 day).
        until = client.head_object(Bucket=bucket, Key=video)["ObjectLockRetainUntilDate"]
        assert until >= datetime.now(UTC) + timedelta(days=3)
        doc = json.loads(client.get_object(Bucket=bucket, Key=metadata_key(video))["Body"].read())
        whole = crc64_b64(crc64nvme(files["cam.mp4"]))
        assert doc["full_object_checksum"]["value"] == whole
        assert doc["full_object_checksum"]["verified_by_store"] is True
        head = client.head_object(Bucket=bucket, Key=video, ChecksumMode="ENABLED")
        assert head["ChecksumCRC64NVME"] == whole
        assert head["ChecksumType"] == "FULL_OBJECT"
        # Object Lock keeps versions, not the key: a new version can be written over it.
        # verify reads what the key holds now and says so; the locked version stands.
        first = client.head_object(Bucket=bucket, Key=video)["VersionId"]
        client.put_object(Bucket=bucket, Key=video, Body=b"forged", ContentMD5=_md5(b"forged"))
    finally:
        client.close()
    verified = run_cli(["verify", video, "--public-key", str(public)], env)
    assert verified.returncode == 1
    assert verified.stdout.startswith(f"MISMATCH      {video}")
    client = s3_server.boto_client()
    try:
        kept = client.get_object(Bucket=bucket, Key=video, VersionId=first)["Body"].read()
        assert kept == files["cam.mp4"]
    finally:
        client.close()


async def test_seaweedfs_verifies_the_full_object_checksum(s3_server: SeaweedS3) -> None:
    bucket = _bucket(s3_server, object_lock=False)
    async with open_s3_store(
        bucket=bucket, endpoint_url=s3_server.endpoint_url, access_key_id="test",
        secret_access_key="test", region="us-east-1", probe_prefix="streams/",
        full_object="auto",
    ) as store:
        assert await store.part_checksum() == "crc64nvme"
        key = "streams/s2/cam.mp4"
        body = os.urandom(5 * MiB)
        upload_id = await store.create_multipart(key, "video/mp4")
        etag = await store.upload_part(key, upload_id, 1, body, _md5(body),
                                       crc64nvme_b64=crc64_b64(crc64nvme(body)))
        # The control: a whole-object value the parts do not make is refused, for good.
        with pytest.raises(PermanentError, match="CRC64NVME"):
            await store.complete_multipart(key, upload_id, [(1, etag)],
                                           crc64nvme_b64=crc64_b64(crc64nvme(body) ^ 1))
        await store.complete_multipart(key, upload_id, [(1, etag)],
                                       crc64nvme_b64=crc64_b64(crc64nvme(body)))
        assert await store.get_object(key) == body
