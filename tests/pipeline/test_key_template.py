"""S3_KEY_TEMPLATE in the pipeline (SPEC §2.23): keys as the template says, fixed when the
stream starts (a changed template never moves a stream in flight), and a wiped store is
still rebuilt from keys that keep the path."""

from __future__ import annotations

from pathlib import Path

from cefmp4.storage.memory import MemoryObjectStore
from tests.pipeline.conftest import (
    PART,
    FakeProber,
    daemon,
    make_settings,
    metadata,
    pattern,
    until,
    videos,
)

TEMPLATE_A = "{instance}/{dir}/{started:%Y}/{stream_id}/{relpath}"
TEMPLATE_B = "{stream_id}/{name}"


async def test_keys_follow_the_template(
    tmp_path: Path, watch: Path, store: MemoryObjectStore, prober: FakeProber
) -> None:
    settings = make_settings(tmp_path, watch, s3_key_template=TEMPLATE_A, instance_id="nvr7")
    (watch / "cam1").mkdir()
    data = pattern(PART + 5)
    async with daemon(settings, store, prober):
        (watch / "cam1" / "a.mp4").write_bytes(data)
        await until(lambda: len(videos(store)) == 1, what="the object")
    [key] = videos(store)
    import re
    from datetime import UTC, datetime

    parts = key.split("/")
    assert parts[:3] == ["streams", "nvr7", "cam1"]
    assert parts[3] == str(datetime.now(UTC).year)
    assert re.fullmatch(r"\d{8}T\d{6}Z-[0-9a-f]{10}", parts[4])  # the stream id
    assert parts[5:] == ["cam1", "a.mp4"]
    assert metadata(store, key)["s3_key"] == key  # metadata beside it, as always


async def test_a_changed_template_never_moves_a_stream_in_flight(
    tmp_path: Path, watch: Path, store: MemoryObjectStore, prober: FakeProber
) -> None:
    data = pattern(2 * PART + 7, seed=5)
    path = watch / "long.mp4"
    first = make_settings(tmp_path, watch, s3_key_template=TEMPLATE_A, instance_id="nvr7",
                          stream_timeout_seconds=60)
    async with daemon(first, store, prober):
        with path.open("wb") as f:
            f.write(data[:PART + 10])
            f.flush()
            await until(lambda: store.calls["upload_part"] >= 1, what="a part")
    [upload] = store.open_uploads()
    assert upload.key.startswith("streams/nvr7/")
    with path.open("ab") as f:
        f.write(data[PART + 10:])
    second = make_settings(tmp_path, watch, s3_key_template=TEMPLATE_B)
    async with daemon(second, store, prober):
        await until(lambda: len(videos(store)) == 1, what="the object")
    assert list(videos(store).items()) == [(upload.key, data)]


async def test_a_wiped_store_is_rebuilt_from_templated_keys(
    tmp_path: Path, watch: Path, store: MemoryObjectStore, prober: FakeProber
) -> None:
    import shutil

    data = pattern(2 * PART + 3, seed=9)
    path = watch / "w.mp4"
    settings = make_settings(tmp_path, watch, s3_key_template=TEMPLATE_A, instance_id="nvr7",
                             stream_timeout_seconds=60)
    async with daemon(settings, store, prober):
        with path.open("wb") as f:
            f.write(data[:PART + 1])
            f.flush()
            await until(lambda: store.calls["upload_part"] >= 1, what="a part")
    shutil.rmtree(settings.state_dir)  # the checkpoint store is gone
    with path.open("ab") as f:
        f.write(data[PART + 1:])
    quick = make_settings(tmp_path, watch, s3_key_template=TEMPLATE_A, instance_id="nvr7")
    async with daemon(quick, store, prober):
        await until(lambda: len(videos(store)) == 1, what="the object")
    [(key, body)] = videos(store).items()
    assert body == data
    assert key.startswith("streams/nvr7/")
    assert store.open_uploads() == []  # the old upload was adopted, not left behind
