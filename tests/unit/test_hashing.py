"""Content-MD5 and multipart ETags."""

from __future__ import annotations

import hashlib

import pytest

from cefmp4.core.hashing import multipart_etag, normalize_etag


def test_multipart_etag_is_md5_of_md5s_with_count() -> None:
    parts = [b"a" * 100, b"b" * 50]
    hexes = [hashlib.md5(p).hexdigest() for p in parts]
    expected = hashlib.md5(b"".join(hashlib.md5(p).digest() for p in parts)).hexdigest()
    assert multipart_etag(hexes) == f"{expected}-2"


def test_multipart_etag_of_one_part_still_has_a_count() -> None:
    digest = hashlib.md5(b"x").hexdigest()
    assert multipart_etag([digest]).endswith("-1")
    assert multipart_etag([f'"{digest.upper()}"']) == multipart_etag([digest])


@pytest.mark.parametrize("bad", [[], ["abc"], ["zz" * 16]])
def test_multipart_etag_refuses_non_md5s(bad: list[str]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the message varies by cause
        multipart_etag(bad)


@pytest.mark.parametrize(("raw", "clean"), [
    ('"ABCdef"', "abcdef"), ("abc", "abc"), ('W/"abc-3"', "abc-3"), (' "x" ', "x"),
])
def test_normalize_etag(raw: str, clean: str) -> None:
    assert normalize_etag(raw) == clean
