"""Which container formats are watched, and the Content-Type of each (SPEC §2.17). Pure.

``WATCH_EXTENSIONS`` is a comma-separated list such as ``.mp4,.mov,.mkv,.ts``; names are
matched in any case. Every extension gets the same rewrite-safe completion (§2.3): nothing
in the pipeline depends on the MP4 layout, so only discovery and the Content-Type change.
"""

from __future__ import annotations

DEFAULT_EXTENSIONS = (".mp4",)

# IANA types where one is registered, else the de-facto types browsers and players send.
# ``.m4v`` is Apple's MP4 variant: ``video/x-m4v`` is what Apple tools and most web servers
# use, and players that do not know it still sniff the MP4 inside.
_CONTENT_TYPES = {
    ".mp4": "video/mp4",
    ".m4v": "video/x-m4v",
    ".mov": "video/quicktime",
    ".qt": "video/quicktime",
    ".mkv": "video/x-matroska",
    ".mka": "audio/x-matroska",
    ".webm": "video/webm",
    ".ts": "video/mp2t",
    ".m2ts": "video/mp2t",
    ".mts": "video/mp2t",
    ".flv": "video/x-flv",
    ".avi": "video/x-msvideo",
    ".3gp": "video/3gpp",
    ".3g2": "video/3gpp2",
    ".m4a": "audio/mp4",
    ".mxf": "application/mxf",
    ".ogv": "video/ogg",
    ".mpg": "video/mpeg",
    ".mpeg": "video/mpeg",
}
FALLBACK_CONTENT_TYPE = "application/octet-stream"

# The ffprobe demuxers each container may be read with (names as `ffprobe -formats` lists
# them). A file is probed only as what its name says: ffprobe detects a format from the
# content, and left free it reads a text file named x.mp4 as an HLS playlist and opens the
# files it names, wherever they are (review #10).
_MOV = "mov,mp4,m4a,3gp,3g2,mj2"
_MATROSKA = "matroska,webm"
_MPEGTS = "mpegts"
_DEMUXERS = {
    ".mp4": _MOV, ".m4v": _MOV, ".mov": _MOV, ".qt": _MOV, ".3gp": _MOV, ".3g2": _MOV,
    ".m4a": _MOV,
    ".mkv": _MATROSKA, ".mka": _MATROSKA, ".webm": _MATROSKA,
    ".ts": _MPEGTS, ".m2ts": _MPEGTS, ".mts": _MPEGTS,
    ".flv": "flv", ".avi": "avi", ".mxf": "mxf", ".ogv": "ogg",
    ".mpg": "mpeg,mpegvideo", ".mpeg": "mpeg,mpegvideo",
}  # fmt: skip
# An extension not in the table (WATCH_EXTENSIONS takes any): any of the containers above,
# each one self-contained. Never a playlist or a list of other files (hls, dash, concat,
# image2 patterns), whose demuxers open what the file names.
SELF_CONTAINED_DEMUXERS = ",".join(
    dict.fromkeys(name for names in _DEMUXERS.values() for name in names.split(","))
)


def parse_extensions(value: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """``".mp4, .MKV"`` → ``(".mp4", ".mkv")``: lower-cased, de-duplicated, in given order.

    Raises ``ValueError`` (with a message fit for a config-error line) when the list is
    empty or an entry does not start with ``.``, contains a path separator, a wildcard or
    white space inside, or is only the dot.
    """
    items = value.split(",") if isinstance(value, str) else list(value)
    seen: list[str] = []
    for raw in items:
        if not isinstance(raw, str):
            raise ValueError(f"{raw!r} is not an extension")
        ext = raw.strip().lower()
        if not ext:
            continue
        if not ext.startswith("."):
            raise ValueError(f"{ext!r} must start with '.' (e.g. .mp4)")
        body = ext[1:]
        if not body or "." in body:
            raise ValueError(f"{ext!r} must be one extension such as .mkv")
        if any(c in body for c in "/\\*?[] \t\0"):
            raise ValueError(f"{ext!r} may not contain '/', wildcards or spaces")
        if ext not in seen:
            seen.append(ext)
    if not seen:
        raise ValueError("must name at least one extension (e.g. .mp4)")
    return tuple(seen)


def content_type(name: str) -> str:
    """The Content-Type for an object whose source is called ``name`` (any case)."""
    dot = name.rfind(".")
    if dot < 0 or "/" in name[dot:]:
        return FALLBACK_CONTENT_TYPE
    return _CONTENT_TYPES.get(name[dot:].lower(), FALLBACK_CONTENT_TYPE)


def has_extension(name: str, extensions: tuple[str, ...]) -> bool:
    """Whether ``name`` ends with one of ``extensions`` (lower-case, from parse_extensions)."""
    lowered = name.lower()
    return any(lowered.endswith(ext) and len(lowered) > len(ext) for ext in extensions)


def probe_formats(name: str) -> str:
    """The ffprobe demuxers (``-format_whitelist``) a file called ``name`` may be read
    with: its container's (``.mp4`` → the MOV family, ``.mkv`` → Matroska/WebM, ``.ts`` →
    MPEG-TS), or every self-contained one for an extension not in the table."""
    dot = name.rfind(".")
    if dot < 0 or "/" in name[dot:]:
        return SELF_CONTAINED_DEMUXERS
    return _DEMUXERS.get(name[dot:].lower(), SELF_CONTAINED_DEMUXERS)
