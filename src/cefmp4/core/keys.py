"""Stream ids and object keys.

A video's key is ``{prefix}{stream_id}/{path relative to WATCH_DIR}`` (SPEC §1.3) and its
metadata sits at the video's key + ``.metadata.json``. The key is computed once when the
stream starts and stored with it, so a rename or a changed prefix never moves an upload.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import PurePath, PurePosixPath

METADATA_SUFFIX = ".metadata.json"
MAX_KEY_BYTES = 1024  # S3's limit on a key, in UTF-8 bytes
MAX_SEGMENT_BYTES = 255  # a file-system-backed store's limit on one segment of a key

NOT_UTF8 = "its name is not valid UTF-8: S3 keys are UTF-8; rename it to upload it"


class UnkeyablePath(ValueError):
    """The file's path cannot become an object key (a name that is not UTF-8, a key longer
    than S3 allows): the file's own property, so it is skipped, never retried. The message
    names no path (the caller logs it, printable); the others ``ValueError`` of
    ``object_key`` are a caller's mistake."""


# Stream ids are generated here, but ids from elsewhere (tests, older versions) only need
# to be one safe path segment.
_STREAM_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def new_stream_id(now: datetime | None = None) -> str:
    """A unique id that sorts by creation time: ``20261124T104500Z-3f9a0c12be``.

    ``now`` defaults to the current time; a naive datetime is taken as UTC. 40 random
    bits make a collision within one second negligible.
    """
    moment = datetime.now(UTC) if now is None else now
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return f"{moment.astimezone(UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(5)}"


def is_stream_id(value: str) -> bool:
    """Whether ``value`` can be a stream id: one non-empty segment of ``[A-Za-z0-9._-]``."""
    return _STREAM_ID.fullmatch(value) is not None


def object_key(
    prefix: str, stream_id: str, rel_path: str | PurePath, *,
    template: KeyTemplate | None = None, started_at: float = 0.0, instance: str = "",
) -> str:
    """The video's key. ``rel_path`` is relative to WATCH_DIR; it is written POSIX-style.

    Raises ``ValueError`` for an unsafe stream id or an absolute or escaping path, and
    ``UnkeyablePath`` (a ``ValueError``) for a name that is not UTF-8 or a key longer than
    S3 allows.
    """
    if not is_stream_id(stream_id):
        raise ValueError(f"invalid stream id: {stream_id!r}")
    posix = rel_path.as_posix() if isinstance(rel_path, PurePath) else rel_path
    parts = PurePosixPath(posix).parts
    if not posix or posix.startswith("/") or not parts or ".." in parts or posix == ".":
        raise ValueError(f"not a relative path inside the watch directory: {posix!r}")
    if template is None or template.is_default:
        below = f"{stream_id}/{posix}"
    else:
        below = template.render(stream_id=stream_id, rel_path=posix, started_at=started_at,
                                instance=instance)
    key = f"{segment_prefix(prefix)}{below}"
    try:
        encoded = key.encode("utf-8")
    except UnicodeEncodeError:
        # A file name that was not UTF-8 arrives surrogate-escaped; S3 keys are UTF-8.
        raise UnkeyablePath(NOT_UTF8) from None
    # The metadata document's key is the longer one: the limit is on both.
    meta = len(encoded) + len(METADATA_SUFFIX)
    if meta > MAX_KEY_BYTES:
        raise UnkeyablePath(
            f"its object key would be {len(encoded)} bytes ({meta} with the metadata's "
            f"suffix), over S3's limit of {MAX_KEY_BYTES}: shorten its path below WATCH_DIR "
            "to upload it"
        )
    # MinIO and SeaweedFS store each segment as a name in a file system (at most 255 bytes;
    # MinIO answers XMinioInvalidObjectName, SeaweedFS KeyTooLongError).
    longest = max(len(seg.encode()) for seg in f"{key}{METADATA_SUFFIX}".split("/"))
    if longest > MAX_SEGMENT_BYTES:
        raise UnkeyablePath(
            f"a name in its path is {longest - len(METADATA_SUFFIX) if longest else 0} bytes; "
            f"S3-compatible stores take at most {MAX_SEGMENT_BYTES - len(METADATA_SUFFIX)} "
            "(with the metadata's suffix): shorten it to upload it"
        )
    return key


def segment_prefix(prefix: str) -> str:
    """``prefix`` as a path segment: ``streams`` → ``streams/``; ``""`` (the whole bucket)
    stays empty."""
    return prefix if not prefix or prefix.endswith("/") else prefix + "/"


def within_prefix(prefix: str, key: str) -> bool:
    """Whether ``key`` lies under ``prefix`` taken as a path segment (SPEC §2.13).

    ``streams`` contains ``streams/a.mp4`` but not ``streams-archive/a.mp4`` nor ``streams``
    itself; the empty prefix (``S3_KEY_PREFIX_WHOLE_BUCKET``) contains every key. A key with
    a ``..`` segment below the prefix is never inside it.
    """
    base = segment_prefix(prefix)
    if not key.startswith(base) or len(key) == len(base):
        return False
    return ".." not in key[len(base) :].split("/")


def metadata_key(video_key: str) -> str:
    """The metadata document's key, beside the video."""
    return video_key + METADATA_SUFFIX


def stream_id_in(prefix: str, key: str, template: KeyTemplate | None = None) -> str | None:
    """The stream id of a video key made by ``object_key`` with ``template``, else None."""
    if not within_prefix(prefix, key) or key.endswith(METADATA_SUFFIX):
        return None
    return (template or KeyTemplate()).stream_id_of(key[len(segment_prefix(prefix)):])


def parse_key(
    prefix: str, key: str, template: KeyTemplate | None = None
) -> tuple[str, str] | None:
    """``(stream_id, rel_path)`` of a video key made by ``object_key``, else ``None``.

    ``None`` for keys outside ``prefix``, metadata keys, anything not shaped like
    ``{prefix}{stream_id}/{rel_path}``, and keys of a template that does not end with
    ``{stream_id}/{relpath}`` (the path below WATCH_DIR cannot be read back from them).
    """
    if not within_prefix(prefix, key) or key.endswith(METADATA_SUFFIX):
        return None
    prefix = segment_prefix(prefix)
    if template is not None and not template.is_default:
        below = key[len(prefix):]
        stream_id_of, rel = template.stream_id_of(below), template.rel_path_of(below)
        if stream_id_of is None or rel is None or ".." in PurePosixPath(rel).parts:
            return None
        return stream_id_of, rel
    stream_id, slash, rel_path = key[len(prefix) :].partition("/")
    if not slash or not rel_path or not is_stream_id(stream_id):
        return None
    parts = PurePosixPath(rel_path).parts
    if rel_path.startswith("/") or ".." in parts:
        return None
    return stream_id, rel_path


def upload_rel_path(path: PurePath, watch_dir: PurePath) -> str:
    """Key path of an uploaded file: relative to WATCH_DIR when inside it, else its name."""
    try:
        return path.relative_to(watch_dir).as_posix()
    except ValueError:
        return path.name


# --- S3_KEY_TEMPLATE (SPEC §2.23) ---------------------------------------------------------

DEFAULT_KEY_TEMPLATE = "{stream_id}/{relpath}"
_PLACEHOLDER = re.compile(r"\{(?P<name>[a-z_]+)(?::(?P<fmt>[^{}]*))?\}")
_NAMES = frozenset({"stream_id", "relpath", "dir", "name", "stem", "ext", "started", "instance"})
# The shape new_stream_id makes: found in any key a template made, whatever surrounds it.
_MADE_ID = re.compile(r"\d{8}T\d{6}Z-[0-9a-f]{10}")


@dataclass(frozen=True, slots=True)
class KeyTemplate:
    """Where the video goes below ``S3_KEY_PREFIX``. Build it with :meth:`parse`."""

    text: str = DEFAULT_KEY_TEMPLATE

    @classmethod
    def parse(cls, text: str) -> KeyTemplate:
        """ValueError (what is wrong) for a template without ``{stream_id}``, with a ``..``
        segment or a leading ``/``, an unknown placeholder, braces that are not one, or
        one that can make an empty key."""
        text = text.strip()
        if text.startswith("/"):
            raise ValueError("must not start with '/' (it goes below S3_KEY_PREFIX)")
        if ".." in text.split("/"):
            raise ValueError("must not have a '..' segment")
        names = [m["name"] for m in _PLACEHOLDER.finditer(text)]
        if unknown := sorted(set(names) - _NAMES):
            raise ValueError(f"unknown placeholder {{{unknown[0]}}}; known: "
                             + ", ".join(f"{{{n}}}" for n in sorted(_NAMES)))
        if "{" in _PLACEHOLDER.sub("", text) or "}" in _PLACEHOLDER.sub("", text):
            raise ValueError("has a brace that is not a placeholder")
        if "stream_id" not in names:
            raise ValueError("must contain {stream_id} (it keeps every recording's key apart)")
        for m in _PLACEHOLDER.finditer(text):
            if m["name"] == "started" and not m["fmt"]:
                raise ValueError("{started:FMT} needs a strftime format, e.g. {started:%Y-%m-%d}")
            if m["fmt"] is not None and m["name"] != "started":
                raise ValueError(f"{{{m['name']}}} takes no format")
        template = cls(text)
        template.render(stream_id="20260101T000000Z-0000000000", rel_path="a.mp4",
                        started_at=0.0, instance="")  # a sample: raises if it makes nonsense
        return template

    @property
    def is_default(self) -> bool:
        return self.text == DEFAULT_KEY_TEMPLATE

    def render(self, *, stream_id: str, rel_path: str, started_at: float,
               instance: str) -> str:
        """The key below the prefix. A placeholder that is empty leaves no empty segment."""
        path = PurePosixPath(rel_path)
        parent = path.parent.as_posix()
        values = {
            "stream_id": stream_id, "relpath": rel_path,
            "dir": "" if parent == "." else parent, "name": path.name, "stem": path.stem,
            "ext": path.suffix, "instance": instance,
        }

        def value(m: re.Match[str]) -> str:
            if m["name"] == "started":
                return datetime.fromtimestamp(started_at, UTC).strftime(m["fmt"])
            return values[m["name"]]

        segments = [s for s in _PLACEHOLDER.sub(value, self.text).split("/") if s]
        if not segments or any(s in (".", "..") for s in segments):
            raise UnkeyablePath(f"S3_KEY_TEMPLATE makes no usable key of {rel_path!r}")
        return "/".join(segments)

    def stream_id_of(self, below: str) -> str | None:
        """The stream id in a key this template made (below the prefix), or None."""
        if self.is_default:
            head = below.partition("/")[0]
            return head if is_stream_id(head) else None
        found = _MADE_ID.search(below)
        return found.group(0) if found else None

    def rel_path_of(self, below: str) -> str | None:
        """The path below WATCH_DIR a key was made from, when the template keeps it whole
        at its end (``…{stream_id}/{relpath}``); else None."""
        if not self.text.endswith("{stream_id}/{relpath}"):
            return None
        stream_id = self.stream_id_of(below)
        if stream_id is None:
            return None
        rel = below[below.index(stream_id) + len(stream_id):].removeprefix("/")
        return rel or None
