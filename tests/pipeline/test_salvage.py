"""Salvage on the in-memory store (SPEC §2.19): abandoned uploads become readable objects
with metadata, a crash at any step converges, and nothing live or foreign is touched."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from cefmp4.checkpoint import StreamState
from cefmp4.config.settings import Settings
from cefmp4.core.keys import metadata_key, new_stream_id, object_key
from cefmp4.core.metadata import ProbeResult
from cefmp4.core.parts import MIB
from cefmp4.core.salvage import MAX_DOCUMENT_BYTES
from cefmp4.runtime.app import App
from cefmp4.runtime.errors import PermanentError
from cefmp4.storage.memory import MemoryObjectStore
from cefmp4.streams.salvage import Salvager
from tests.pipeline.conftest import (
    FakeProber,
    burst,
    capture,
    daemon,
    make_settings,
    metadata,
    pattern,
    records,
    until,
    videos,
)
from tests.pipeline.test_holes import seed

PREFIX = "streams/"
PART = 5 * MIB


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def dt(self) -> datetime:
        return datetime.fromtimestamp(self.now, UTC)


class UrlProber:
    def __init__(self) -> None:
        self.urls: list[tuple[str, str]] = []

    async def probe_url(self, url: str, name: str) -> ProbeResult:
        self.urls.append((url, name))
        return ProbeResult(12.5, format_name="mov,mp4,m4a,3gp,3g2,mj2")


class Presigning(MemoryObjectStore):
    """The memory store with URLs, and a metadata write that can fail (a crash there)."""

    fail_metadata = False

    async def presign_get(self, key: str, expires_s: int) -> str | None:
        return f"https://s3.invalid/{key}?sig=x"

    async def put_object(self, key: str, body: bytes, content_type: str) -> None:
        if self.fail_metadata and key.endswith(".metadata.json"):
            raise PermanentError("the host died here")
        await super().put_object(key, body, content_type)


async def _orphan(store: MemoryObjectStore, rel: str, parts: list[bytes]) -> tuple[str, str]:
    key = object_key(PREFIX, new_stream_id(), rel)
    upload_id = await store.create_multipart(key, "video/mp4")
    for number, body in enumerate(parts, start=1):
        await store.upload_part(key, upload_id, number, body,
                                crc32c_b64=_crc_b64(body))
    return key, upload_id


def _crc_b64(body: bytes) -> str:
    import base64

    import crc32c

    return base64.b64encode(crc32c.crc32c(body).to_bytes(4, "big")).decode()


def _salvager(store: MemoryObjectStore, clock: Clock, prober: UrlProber | None = None,
              count: list[int] | None = None) -> Salvager:
    done = count if count is not None else []
    return Salvager(store, PREFIX, prober=prober, clock=clock,
                    salvaged=lambda: done.append(1), instance="host-b")


async def _run(s: Salvager, store: MemoryObjectStore, older_than: float = 900.0) -> list:  # type: ignore[type-arg]
    outcomes = await s.resume_interrupted()
    for plan in await s.survey(await store.list_multipart_uploads(PREFIX), {},
                               older_than=older_than):
        outcomes.append(await s.carry_out(plan, None))
    return outcomes


async def test_an_abandoned_upload_becomes_a_readable_object_with_metadata() -> None:
    clock = Clock()
    store = Presigning(clock=clock.dt)
    parts = [os.urandom(PART), os.urandom(PART)]
    key, upload_id = await _orphan(store, "cam/rec.mp4", parts)
    clock.now += 3600  # the host died an hour ago
    prober, count = UrlProber(), []
    [outcome] = await _run(_salvager(store, clock, prober, count), store)
    assert (outcome.action, outcome.done, outcome.ok, outcome.playable) == (
        "complete", True, True, True)
    body = parts[0] + parts[1]
    assert await store.get_object(key) == body
    doc = json.loads(await store.get_object(metadata_key(key)))
    assert doc["status"] == "salvaged"
    assert doc["completed_by"] == "salvage"
    assert doc["total_size_bytes"] == len(body)
    assert doc["sha256"] == hashlib.sha256(body).hexdigest()
    assert doc["original_file_path"] is None  # nothing recorded it
    assert doc["relative_path"] == "cam/rec.mp4"
    assert doc["duration_seconds"] == 12.5
    assert [c["part_number"] for c in doc["chunks"]] == [1, 2]
    assert doc["salvage"]["upload_id"] == upload_id
    assert doc["salvage"]["playable"] is True
    assert prober.urls == [(f"https://s3.invalid/{key}?sig=x", key)]
    assert count == [1]
    assert await store.list_multipart_uploads(PREFIX) == []
    assert await store.list_keys(f"{PREFIX}.cefmp4/") == []  # the marker is gone


async def test_a_crash_between_complete_and_metadata_converges() -> None:
    clock = Clock()
    store = Presigning(clock=clock.dt)
    parts = [os.urandom(PART)]
    key, _ = await _orphan(store, "a.mp4", parts)
    clock.now += 3600
    store.fail_metadata = True
    with pytest.raises(PermanentError):
        await _run(_salvager(store, clock), store)
    # Completed, no metadata, no longer listed as an upload: only the marker remembers it.
    assert await store.get_object(key) == parts[0]
    assert await store.list_multipart_uploads(PREFIX) == []
    assert len(await store.list_keys(f"{PREFIX}.cefmp4/salvage/")) == 1
    store.fail_metadata = False
    [outcome] = await _run(_salvager(store, clock), store)
    assert (outcome.action, outcome.done) == ("resumed", True)
    doc = json.loads(await store.get_object(metadata_key(key)))
    assert doc["status"] == "salvaged"
    assert doc["duration_seconds"] is None  # no prober here: said so
    assert doc["duration_error"] == "not probed: no ffprobe here"
    assert await store.list_keys(f"{PREFIX}.cefmp4/") == []
    # Idempotent: a third run finds nothing to do.
    assert await _run(_salvager(store, clock), store) == []


async def test_live_empty_gapped_and_blocked_uploads() -> None:
    clock = Clock()
    store = Presigning(clock=clock.dt)
    live_key, live_id = await _orphan(store, "live.mp4", [os.urandom(PART)])
    empty_key, _ = await _orphan(store, "empty.mp4", [])
    gap_key, gap_id = await _orphan(store, "gap.mp4", [os.urandom(PART)] * 3)
    await store.abort_multipart(gap_key, gap_id)  # rebuild it with part 2 missing
    gap_id = await store.create_multipart(gap_key, "video/mp4")
    one, three = os.urandom(PART), os.urandom(PART)
    await store.upload_part(gap_key, gap_id, 1, one, crc32c_b64=_crc_b64(one))
    await store.upload_part(gap_key, gap_id, 3, three, crc32c_b64=_crc_b64(three))
    blocked_key, blocked_id = await _orphan(store, "blocked.mp4", [os.urandom(PART)])
    await store.put_object(blocked_key, b"someone else's object", "video/mp4")
    clock.now += 3600
    # A sibling instance is still recording live.mp4: it just added a part.
    more = os.urandom(PART)
    await store.upload_part(live_key, live_id, 2, more, crc32c_b64=_crc_b64(more))
    outcomes = {o.key: o for o in await _run(_salvager(store, clock), store)}
    assert outcomes[live_key].action == "skip_live"
    assert outcomes[empty_key].action == "abort_empty"
    assert outcomes[empty_key].done
    assert outcomes[gap_key].action == "complete"
    assert outcomes[gap_key].parts == 1
    assert outcomes[blocked_key].action == "blocked"
    assert not outcomes[blocked_key].ok
    assert await store.get_object(gap_key) == one
    gap_doc = json.loads(await store.get_object(metadata_key(gap_key)))
    assert gap_doc["salvage"]["parts_left_out"] == [3]
    assert gap_doc["salvage"]["gap_after_part"] == 1
    assert await store.get_object(blocked_key) == b"someone else's object"
    left = {u.upload_id for u in await store.list_multipart_uploads(PREFIX)}
    assert left == {live_id, blocked_id}


async def test_a_hostile_marker_is_never_acted_on() -> None:
    clock = Clock()
    store = Presigning(clock=clock.dt)
    marker = {"key": "elsewhere/x.mp4", "upload_id": "u", "etag": "e", "parts": [[1, 5, "e", 0]],
              "left_out": [], "initiated_at": 0, "started_at": 0, "started_stream_at": 0,
              "stream_id": None, "path": None, "rel_path": None, "instance": ""}
    await store.put_object(f"{PREFIX}.cefmp4/salvage/bad.json", json.dumps(marker).encode(),
                           "application/json")
    await store.put_object(f"{PREFIX}.cefmp4/salvage/junk.json", b"\xff not json",
                           "application/json")
    # Nested past Python's depth (RecursionError, not ValueError), and larger than any
    # marker cefmp4 writes: neither is read whole or raises.
    await store.put_object(f"{PREFIX}.cefmp4/salvage/deep.json", b"[" * 200_000,
                           "application/json")
    huge = f"{PREFIX}.cefmp4/salvage/huge.json"
    await store.put_object(huge, b" " * (MAX_DOCUMENT_BYTES + 1), "application/json")
    read: list[str] = []
    real_get = store.get_object

    async def get_object(key: str) -> bytes:
        read.append(key)
        return await real_get(key)

    store.get_object = get_object  # type: ignore[method-assign]
    with capture_logs() as events:
        assert await _run(_salvager(store, clock), store) == []
    assert await store.list_keys("elsewhere/") == []
    assert huge not in read
    unreadable = {e["marker"] for e in events if e["event"] == "salvage_marker_unreadable"}
    assert unreadable == {f"{PREFIX}.cefmp4/salvage/{n}.json"
                          for n in ("bad", "junk", "deep", "huge")}


_MARKER = {"key": f"{PREFIX}x.mp4", "upload_id": "u", "etag": "e", "parts": [[1, 5, "e", 0]],
           "left_out": [], "initiated_at": 0, "started_at": 0, "started_stream_at": 0,
           "stream_id": None, "path": None, "rel_path": None, "instance": ""}


@pytest.mark.parametrize("change", [
    {"key": 5}, {"upload_id": None}, {"parts": [[1]]}, {"parts": [[1, "5", "e", 0]]},
    {"parts": [[True, 5, "e", 0]]}, {"parts": [[0, 5, "e", 0]]}, {"parts": "x"},
    {"parts": [[1, 5, "e", "yesterday"]]}, {"left_out": "x"}, {"left_out": [-1]},
    {"initiated_at": "yesterday"}, {"started_at": float("nan")}, {"tail_bytes": -5},
    {"path": 7}, {"surprise": 1},
], ids=repr)
async def test_a_marker_with_a_field_of_another_type_is_never_acted_on(
    change: dict[str, object],
) -> None:
    """Well-formed JSON, but not what cefmp4 writes: warned about and passed by, while the
    sweep goes on (such a marker used to raise past the check, every sweep)."""
    clock = Clock()
    store = Presigning(clock=clock.dt)
    body = json.dumps({**_MARKER, **change}).encode()
    await store.put_object(f"{PREFIX}.cefmp4/salvage/odd.json", body, "application/json")
    with capture_logs() as events:
        assert await _run(_salvager(store, clock), store) == []
    assert [e["marker"] for e in events if e["event"] == "salvage_marker_unreadable"] == [
        f"{PREFIX}.cefmp4/salvage/odd.json"]


async def test_the_daemons_sweeper_salvages_and_never_aborts_footage(
    tmp_path: Path, watch: Path, prober: FakeProber
) -> None:
    """A recording whose host (and embedded store) is gone: the next instance's sweeper
    makes it an object instead of aborting it (it used to: the only copy, destroyed)."""
    store = Presigning()
    settings = make_settings(tmp_path, watch, abort_orphan_uploads_after_hours=1)
    key, _ = await _orphan(store, "gone/cam.mp4", [os.urandom(PART), os.urandom(PART)])
    from tests.pipeline.test_tasks_and_sweep import LaterClock

    app = App(settings, objects=store, prober=prober, clock=LaterClock(2 * 3600))
    stop = asyncio.Event()
    task = asyncio.create_task(app.run(stop))
    try:
        await until(lambda: app.metrics.streams_salvaged._value.get() >= 1,
                    what="the orphan salvaged")
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    assert len(await store.get_object(key)) == 2 * PART
    doc = json.loads(await store.get_object(metadata_key(key)))
    assert doc["status"] == "salvaged"
    assert app.metrics.orphan_uploads_aborted._value.get() == 0


async def test_salvaged_metadata_is_signed_like_any_other() -> None:
    """SIGNING_KEY_FILE: the salvage's document goes through the same seal, last."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from cefmp4.core.signature import Signer, Verdict, check_signature
    from cefmp4.streams.evidence import Evidence

    clock = Clock()
    store = Presigning(clock=clock.dt)
    key, _ = await _orphan(store, "signed.mp4", [os.urandom(PART)])
    clock.now += 3600
    private = Ed25519PrivateKey.generate()
    evidence = Evidence(Signer(private))
    salvager = Salvager(store, PREFIX, prober=None, clock=clock, seal=evidence.seal)
    [outcome] = await _run(salvager, store)
    assert outcome.done
    doc = json.loads(await store.get_object(metadata_key(key)))
    assert doc["status"] == "salvaged"
    assert doc["signature"]["alg"] == "ed25519"
    assert check_signature(doc, private.public_key()).verdict is Verdict.OK


# --- the owner meets its upload salvaged (core.ending.Resume.TAKEN) ------------------------


async def _salvage_all(store: MemoryObjectStore) -> None:
    """Another party's `cefmp4 salvage`, an hour on: every open upload is abandoned to it."""
    clock = store.clock
    salvager = Salvager(store, "streams/", prober=None,
                        clock=lambda: clock().timestamp() + 3600)
    for plan in await salvager.survey(store.open_uploads(), {}, older_than=900):
        assert (await salvager.carry_out(plan, None)).done


async def test_a_live_stream_whose_upload_was_salvaged_goes_on_as_a_new_stream(
    tmp_path: Path, watch: Path, store: MemoryObjectStore, prober: FakeProber
) -> None:
    """The salvaged object stands with the salvager's metadata; the stream is over at its
    key (before: every part answered NoSuchUpload, 'already complete' failed the stream
    again and again); the recording goes on as a new stream, nothing lost."""
    settings = make_settings(tmp_path, watch, stream_timeout_seconds=2.0)
    data = pattern(2 * PART + 1000, seed=8)
    path = watch / "cam.mp4"
    with capture() as logs:
        async with daemon(settings, store, prober):
            with path.open("wb") as f:
                f.write(data[:PART + 10])
                f.flush()
                await until(lambda: store.calls["upload_part"] >= 1, what="part 1")
                await _salvage_all(store)
                [salvaged_key] = videos(store)
                f.write(data[PART + 10:])
                f.flush()
            await until(lambda: len(videos(store)) == 2, timeout=30, what="the new stream")
            await until(lambda: len([k for k in store.objects if k.endswith(".json")]) >= 2,
                        what="its metadata")
    objects = videos(store)
    assert objects.pop(salvaged_key) == data[:PART]  # never overwritten
    assert metadata(store, salvaged_key)["status"] == "salvaged"
    [(key, body)] = objects.items()
    assert body == data
    assert metadata(store, key)["status"] == "complete"
    assert [e["event"] for e in logs].count("stream_taken") == 1
    assert not [e for e in logs if e["event"] == "stream_failed"]
    states = {r.key: (r.state, r.status) for r in await records(settings)}
    assert states[salvaged_key] == (StreamState.COMPLETED, "salvaged")
    assert states[key] == (StreamState.COMPLETED, "complete")


async def test_a_resumed_stream_whose_upload_was_salvaged_while_down(
    tmp_path: Path, watch: Path, store: MemoryObjectStore, prober: FakeProber
) -> None:
    """Down past the age limit, salvaged meanwhile: the restart never restarts the upload
    over the salvaged object; the file becomes a new stream of its own."""
    settings = make_settings(tmp_path, watch, stream_timeout_seconds=60.0)
    data = pattern(PART + 5000, seed=9)
    path = watch / "cam.mp4"
    path.write_bytes(data)
    async with daemon(settings, store, prober):
        await until(lambda: store.calls["upload_part"] >= 1, what="part 1")
    await _salvage_all(store)
    [salvaged_key] = videos(store)
    fast = make_settings(tmp_path, watch, stream_timeout_seconds=1.0)
    with capture() as logs:
        async with daemon(fast, store, prober):
            await until(lambda: len(videos(store)) == 2, timeout=30, what="the new stream")
            await until(lambda: len([k for k in store.objects if k.endswith(".json")]) >= 2,
                        what="its metadata")
    objects = videos(store)
    assert objects.pop(salvaged_key) == data[:PART]
    [body] = objects.values()
    assert body == data
    assert [e["event"] for e in logs].count("stream_taken") == 1
    assert not [e for e in logs if e["event"] in ("stream_failed", "upload_restarted")]


async def test_a_stale_plan_is_never_carried_out(store: MemoryObjectStore) -> None:
    """Racing seed 63 of the simulator: a plan made when the upload held no part, carried
    out after its owner added parts (a retried request in between), aborted them. The
    upload is surveyed again just before acting, and the fresh plan is what is done."""
    key = object_key("streams/", new_stream_id(), "cam.mp4")
    upload_id = await store.create_multipart(key, "video/mp4")
    clock, ahead = store.clock, [3600.0]
    salvager = Salvager(store, "streams/", prober=None,
                        clock=lambda: clock().timestamp() + ahead[0])
    [empty] = await salvager.survey(store.open_uploads(), {}, older_than=900)
    assert empty.action.value == "abort_empty"
    body = os.urandom(5 * MIB)  # a full part: only the last may be short
    await store.upload_part(key, upload_id, 1, body,
                            base64.b64encode(hashlib.md5(body).digest()).decode())
    ahead[0] = 10.0  # the owner added it 10 s ago: a live upload now
    outcome = await salvager.carry_out(empty, None)
    assert (outcome.done, outcome.action) == (False, "skip_live")
    assert [p.part_number for p in await store.list_parts(key, upload_id)] == [1]
    ahead[0] = 3600.0
    [complete] = await salvager.survey(store.open_uploads(), {}, older_than=900)
    assert complete.action.value == "complete"
    body2 = os.urandom(1000)
    await store.upload_part(key, upload_id, 2, body2,
                            base64.b64encode(hashlib.md5(body2).digest()).decode())
    ahead[0] = 10.0
    outcome = await salvager.carry_out(complete, None)  # would drop part 2
    assert (outcome.done, outcome.action) == (False, "skip_live")
    assert key not in store.objects

async def test_a_finalizing_owner_never_publishes_a_salvaged_prefix_as_its_own(
    settings: Settings, watch: Path, store: MemoryObjectStore, prober: FakeProber
) -> None:
    """Racing seeds 37 and 41: a salvager completed the upload from exactly the owner's
    first parts while the owner was finalizing (and away). That object is the owner's
    parts, so HeadObject alone takes it for the owner's own Complete; the salvage's
    metadata says otherwise. Before, the owner confirmed it and wrote 'complete' over the
    salvaged metadata: a prefix of the recording called complete."""
    path = watch / "cam.mp4"
    data = pattern(2 * PART + 777, seed=31)
    path.write_bytes(data)
    record = await seed(settings, store, path, data, parts=2, status="complete")
    await _salvage_all(store)
    assert metadata(store, record.key)["status"] == "salvaged"
    with capture() as logs:
        await burst(settings, store, prober)
    assert store.objects[record.key].body == data[:2 * PART]  # never replaced
    assert metadata(store, record.key)["status"] == "salvaged"  # nor its metadata
    [(key, body)] = [(k, b) for k, b in videos(store).items() if k != record.key]
    assert body == data
    assert metadata(store, key)["status"] == "complete"
    assert [e["event"] for e in logs].count("stream_taken") == 1
