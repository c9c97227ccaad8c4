"""cefmp4 end to end on a second S3 implementation: moto's server (AWS semantics), including
a bucket with Object Lock default retention, which SeaweedFS does not enforce."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path

import pytest
from botocore.exceptions import ClientError  # type: ignore[import-untyped]

from cefmp4.core.keys import metadata_key
from tests.support.app import PROBE_MARK, make_settings, running_app, sha256_file, wait_metadata
from tests.support.moto import MotoS3, moto_s3
from tests.support.proc import run_cli, settings_env

__all__ = ["moto_s3"]  # a fixture, used by name

pytestmark = pytest.mark.timeout(180)
MiB = 1024 * 1024


def _bucket(moto: MotoS3, *, object_lock: bool = False) -> str:
    name = f"e2e-{uuid.uuid4().hex[:12]}"
    client = moto.boto_client()
    try:
        if not object_lock:
            client.create_bucket(Bucket=name)
            return name
        client.create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
        client.put_object_lock_configuration(
            Bucket=name,
            ObjectLockConfiguration={
                "ObjectLockEnabled": "Enabled",
                "Rule": {"DefaultRetention": {"Mode": "GOVERNANCE", "Days": 1}},
            },
        )
        return name
    finally:
        client.close()


def test_object_lock_bucket_requires_content_md5(moto_s3: MotoS3) -> None:
    """The control: what AWS (and moto) answer a PutObject without Content-MD5 here."""
    bucket = _bucket(moto_s3, object_lock=True)
    client = moto_s3.boto_client()
    try:
        with pytest.raises(ClientError, match="MissingUploadObjectWithObjectLockHeaders"):
            client.put_object(Bucket=bucket, Key="streams/x.json", Body=b"{}")
        md5 = base64.b64encode(hashlib.md5(b"{}").digest()).decode()
        client.put_object(Bucket=bucket, Key="streams/x.json", Body=b"{}", ContentMD5=md5)
    finally:
        client.close()


def test_upload_into_an_object_lock_bucket(
    tmp_path: Path, moto_s3: MotoS3, sample_mp4: Path
) -> None:
    bucket = _bucket(moto_s3, object_lock=True)
    settings = make_settings(tmp_path=tmp_path, s3=moto_s3, bucket=bucket)  # type: ignore[arg-type]
    env = settings_env(settings)
    video = settings.watch_dir / "locked.mp4"
    empty = settings.watch_dir / "empty.mp4"
    shutil.copyfile(sample_mp4, video)
    empty.write_bytes(b"")  # too small for multipart: a plain PutObject of the video

    result = run_cli(["upload", str(video), str(empty)], env)

    assert result.returncode == 0, result.stdout + result.stderr
    client = moto_s3.boto_client()
    try:
        keys = {o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]}
        [video_key] = [k for k in keys if k.endswith("/locked.mp4")]
        [empty_key] = [k for k in keys if k.endswith("/empty.mp4")]
        assert {metadata_key(video_key), metadata_key(empty_key)} <= keys
        body = client.get_object(Bucket=bucket, Key=video_key)["Body"].read()
        assert hashlib.sha256(body).hexdigest() == sha256_file(video)
        doc = json.loads(client.get_object(Bucket=bucket, Key=metadata_key(video_key))["Body"]
                         .read())
        assert doc["status"] == "complete"
        assert doc["total_size_bytes"] == video.stat().st_size
        assert len(doc["chunks"]) == 3
        # The bucket's default retention applied to what cefmp4 wrote.
        head = client.head_object(Bucket=bucket, Key=metadata_key(video_key))
        assert head["ObjectLockMode"] == "GOVERNANCE"
        assert client.head_object(Bucket=bucket, Key=empty_key)["ContentLength"] == 0
    finally:
        client.close()


async def test_daemon_uploads_a_growing_recording(tmp_path: Path, moto_s3: MotoS3) -> None:
    bucket = _bucket(moto_s3)
    settings = make_settings(tmp_path=tmp_path, s3=moto_s3, bucket=bucket)  # type: ignore[arg-type]
    path = settings.watch_dir / "cam" / "growing.mp4"
    path.parent.mkdir()
    chunks = [os.urandom(4 * MiB), os.urandom(4 * MiB), os.urandom(3 * MiB)]
    async with running_app(settings):
        with path.open("wb") as f:
            for chunk in chunks:
                f.write(chunk)
                f.flush()
                await asyncio.sleep(0.5)  # a recorder writing over time
        [doc] = await wait_metadata(moto_s3, bucket, "cam/growing.mp4")  # type: ignore[arg-type]

    assert doc["status"] == "complete"
    assert doc["sha256"] == hashlib.sha256(b"".join(chunks)).hexdigest()
    assert doc["total_size_bytes"] == 11 * MiB
    assert [c["size_bytes"] for c in doc["chunks"]] == [5 * MiB, 5 * MiB, 1 * MiB]
    client = moto_s3.boto_client()
    try:
        body = client.get_object(Bucket=bucket, Key=doc["s3_key"])["Body"].read()
        assert body == b"".join(chunks)
        assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    finally:
        client.close()


async def test_restart_resumes_without_resending_parts(tmp_path: Path, moto_s3: MotoS3) -> None:
    """Stopped after part 1 and started again: part 1 is adopted from ListParts on moto."""
    bucket = _bucket(moto_s3)
    settings = make_settings(tmp_path=tmp_path, s3=moto_s3, bucket=bucket,  # type: ignore[arg-type]
                             stream_timeout_seconds=60)
    path = settings.watch_dir / "resume.mp4"
    first, rest = os.urandom(6 * MiB), os.urandom(5 * MiB)
    client = moto_s3.boto_client()
    try:
        async with running_app(settings):
            path.write_bytes(first)
            for _ in range(300):
                listed = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
                uploads = [u for u in listed if PROBE_MARK not in u["Key"]]
                if uploads and client.list_parts(
                    Bucket=bucket, Key=uploads[0]["Key"], UploadId=uploads[0]["UploadId"]
                ).get("Parts"):
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("part 1 never reached moto")
        [upload] = client.list_multipart_uploads(Bucket=bucket)["Uploads"]
        [part1] = client.list_parts(Bucket=bucket, Key=upload["Key"],
                                    UploadId=upload["UploadId"])["Parts"]
        with path.open("ab") as f:
            f.write(rest)
        quick = settings.model_copy(update={"stream_timeout_seconds": 1.5})
        async with running_app(quick) as app:
            [doc] = await wait_metadata(moto_s3, bucket, "resume.mp4")  # type: ignore[arg-type]
            reuploaded = app.metrics.parts_reuploaded._value.get()
    finally:
        client.close()

    assert doc["sha256"] == hashlib.sha256(first + rest).hexdigest()
    assert doc["chunks"][0]["etag"] == part1["ETag"].strip('"')
    assert doc["s3_key"] == upload["Key"]
    assert reuploaded == 0
