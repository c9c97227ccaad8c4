"""S3_KEY_TEMPLATE (SPEC §2.23): the archive's layout, rendered and read back. Pure."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from cefmp4.core.keys import (
    KeyTemplate,
    UnkeyablePath,
    object_key,
    parse_key,
    stream_id_in,
)

SID = "20261207T101010Z-0123456789"
STARTED = datetime(2026, 12, 7, 10, 10, 10, tzinfo=UTC).timestamp()


def _key(template: str, rel: str, instance: str = "node-a") -> str:
    return object_key("streams/", SID, rel, template=KeyTemplate.parse(template),
                      started_at=STARTED, instance=instance)


@pytest.mark.parametrize(("template", "rel", "expected"), [
    ("{stream_id}/{relpath}", "cam1/a.mp4", f"streams/{SID}/cam1/a.mp4"),
    # per camera and day: lifecycle rules and IAM policies per camera prefix
    ("{dir}/{started:%Y/%m/%d}/{stream_id}{ext}", "cam1/a.mp4",
     f"streams/cam1/2026/12/07/{SID}.mp4"),
    # an empty placeholder leaves no empty segment
    ("{dir}/{started:%Y-%m-%d}/{stream_id}/{name}", "a.mp4",
     f"streams/2026-12-07/{SID}/a.mp4"),
    ("{instance}/{stream_id}/{relpath}", "x/b.mkv", f"streams/node-a/{SID}/x/b.mkv"),
    ("{instance}/{stream_id}/{relpath}", "b.mkv", f"streams/{SID}/b.mkv"),  # no instance
    ("{stem}_{stream_id}{ext}", "d/cam.ts", f"streams/cam_{SID}.ts"),
])
def test_render(template: str, rel: str, expected: str) -> None:
    instance = "" if expected == f"streams/{SID}/b.mkv" else "node-a"
    assert _key(template, rel, instance) == expected


@pytest.mark.parametrize(("template", "reason"), [
    ("{relpath}", "must contain {stream_id}"),
    ("/{stream_id}", "must not start with '/'"),
    ("{stream_id}/../x", "'..' segment"),
    ("{camera}/{stream_id}", "unknown placeholder {camera}"),
    ("{started}/{stream_id}", "needs a strftime format"),
    ("{stream_id}/{name:%Y}", "takes no format"),
    ("{stream_id}/{", "brace"),
])
def test_bad_templates(template: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason.replace("{", r"\{").replace("}", r"\}")
                       .replace("(", r"\(").replace(".", r"\.")):
        KeyTemplate.parse(template)


def test_a_value_that_makes_no_key_is_unkeyable() -> None:
    with pytest.raises(UnkeyablePath, match="no usable key"):
        _key("{instance}/{stream_id}", "a.mp4", instance="..")


def test_keys_are_read_back() -> None:
    """The wiped-store rebuild needs the path below WATCH_DIR: readable when the template
    ends with {stream_id}/{relpath}; salvage needs only the stream id: always found."""
    kept = KeyTemplate.parse("{instance}/{started:%Y/%m/%d}/{stream_id}/{relpath}")
    key = _key(kept.text, "cam1/a.mp4")
    assert parse_key("streams/", key, kept) == (SID, "cam1/a.mp4")
    lossy = KeyTemplate.parse("{dir}/{stream_id}{ext}")
    key = _key(lossy.text, "cam1/a.mp4")
    assert parse_key("streams/", key, lossy) is None
    assert stream_id_in("streams/", key, lossy) == SID
    assert stream_id_in("streams/", key + ".metadata.json", lossy) is None
    assert stream_id_in("other/", key, lossy) is None


def test_the_key_limits_hold_for_templates() -> None:
    with pytest.raises(UnkeyablePath, match="over S3's limit"):
        _key("{started:%Y%m%d%H%M%S}" * 80 + "/{stream_id}", "a.mp4")
