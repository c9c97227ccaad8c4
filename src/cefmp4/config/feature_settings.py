"""The settings of the recorder features (SPEC §1.2 second table, §2.14-§2.17).

A base of ``cefmp4.config.settings.Settings``, kept apart so that both stay small; the one check
across settings (AFTER_UPLOAD_DIR against WATCH_DIR, NOTIFY_REDIS_STREAM needs REDIS_URL)
is in ``Settings`` beside the settings it reads.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings

from cefmp4.core.containers import parse_extensions
from cefmp4.core.evict import KeepFree, parse_keep_free
from cefmp4.core.keys import DEFAULT_KEY_TEMPLATE, KeyTemplate

AfterUpload = Literal["keep", "delete", "move", "evict"]
# Never repeated in a configuration error: the URL may carry a token.
FEATURE_SECRETS = frozenset({"NOTIFY_WEBHOOK_URL", "NOTIFY_WEBHOOK_SECRET"})
MAX_HOST_NAME = 253  # DNS: the longest name, without the root's trailing dot


class FeatureSettings(BaseSettings):
    """Writer-aware completion, after-upload actions, notifications, containers."""

    watch_extensions: str = Field(
        ".mp4", description="comma-separated extensions to watch, any case (.mp4,.mov,.mkv,.ts)"
    )
    complete_on_close_seconds: float | None = Field(
        None, description="complete this long after the last writer closed the file; empty = off"
    )
    hold_while_open: bool = Field(
        False, description="do not complete an idle file a visible process holds open for writing"
    )
    max_hold_seconds: float = Field(
        3600.0, description="longest HOLD_WHILE_OPEN delays a completion"
    )
    after_upload: AfterUpload = Field(
        "keep", description="keep, delete, move or evict the source once its object is confirmed"
    )
    s3_key_template: str = Field(
        DEFAULT_KEY_TEMPLATE, description="the video's key below S3_KEY_PREFIX: {stream_id}, "
        "{relpath}, {dir}, {name}, {stem}, {ext}, {started:FMT}, {instance}"
    )
    evict_keep_free: str = Field(
        "10%", description="AFTER_UPLOAD=evict: free space to keep on WATCH_DIR's file "
        "system, N% or a size (20G, 500M)"
    )
    after_upload_dir: Path | None = Field(
        None, description="target directory of AFTER_UPLOAD=move (outside WATCH_DIR)"
    )
    notify_webhook_url: SecretStr = Field(
        SecretStr(""), description="POST each completed stream's metadata here; empty = off"
    )
    notify_webhook_secret: SecretStr = Field(
        SecretStr(""), description="HMAC-SHA256 key of the webhook's X-Cefmp4-Signature header"
    )
    rpo_seconds: float | None = Field(
        None, description="ship an active stream's bytes not yet in a part at least this "
        "often, as tail segments (SPEC §2.20); empty = off"
    )
    notify_redis_stream: str = Field(
        "", description="XADD each completed stream's metadata to this Redis stream; empty = off"
    )

    @field_validator("watch_extensions", mode="before")
    @classmethod
    def _extensions(cls, v: Any) -> Any:
        if isinstance(v, str | list | tuple):
            return ",".join(parse_extensions(v))
        return v

    @field_validator("complete_on_close_seconds", "after_upload_dir", "rpo_seconds",
                     mode="before")
    @classmethod
    def _empty_is_none(cls, v: Any) -> Any:
        return None if isinstance(v, str) and not v.strip() else v

    @field_validator("complete_on_close_seconds", "max_hold_seconds", "rpo_seconds")
    @classmethod
    def _positive_seconds(cls, v: float | None) -> float | None:
        if v is not None and not v > 0:
            raise ValueError("must be greater than 0")
        return v

    @field_validator("s3_key_template")
    @classmethod
    def _key_template(cls, v: str) -> str:
        return KeyTemplate.parse(v).text  # ValueError: one line naming the setting

    @property
    def key_template(self) -> KeyTemplate:
        return KeyTemplate.parse(self.s3_key_template)

    @field_validator("evict_keep_free")
    @classmethod
    def _keep_free(cls, v: str) -> str:
        parse_keep_free(v)  # ValueError: one line naming the setting
        return v.strip()

    @property
    def keep_free(self) -> KeepFree:
        return parse_keep_free(self.evict_keep_free)

    @field_validator("after_upload", mode="before")
    @classmethod
    def _after_upload_lower(cls, v: Any) -> Any:
        return v.strip().lower() if isinstance(v, str) else v

    @field_validator("notify_webhook_url")
    @classmethod
    def _webhook_url(cls, v: SecretStr) -> SecretStr:
        url = v.get_secret_value().strip()
        if url:
            check_webhook_url(url)
        return SecretStr(url)

    @field_validator("notify_redis_stream")
    @classmethod
    def _redis_stream(cls, v: str) -> str:
        if v != v.strip() or any(c in v for c in "\r\n\0"):
            raise ValueError("must be a plain Redis key name (no spaces around, no newlines)")
        return v

    @property
    def extensions(self) -> tuple[str, ...]:
        return parse_extensions(self.watch_extensions)



def check_webhook_url(url: str) -> None:
    """Raise ValueError unless aiohttp can POST to ``url``: http(s), a port in 1-65535 and a
    host it can resolve. A host the resolver cannot even encode (``ex..ample``) would fail
    every delivery for ever. The messages never repeat the URL: it may carry credentials."""
    if any(c.isspace() for c in url):
        raise ValueError("must not contain white space")
    try:
        parts = urlsplit(url)
        port = parts.port  # ValueError unless a number in 0-65535
    except ValueError:
        raise ValueError("must be an http:// or https:// URL with a valid port") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL with a host")
    if port == 0:
        raise ValueError("port must be 1-65535")
    problem = host_name_problem(parts.hostname)
    if problem:
        raise ValueError(f"host {problem}")


def host_name_problem(host: str) -> str | None:
    """Why the resolver would refuse ``host`` (an IP address or a DNS name), or None."""
    try:
        ipaddress.ip_address(host.split("%", 1)[0])  # an IPv6 literal may carry a zone
        return None
    except ValueError:
        pass
    labels = host.removesuffix(".").split(".")  # one trailing dot: the root, allowed
    if not all(labels):
        return "has an empty label (two dots in a row, or a leading dot)"
    try:
        # What getaddrinfo does to the name (yarl first tries IDNA 2008, then this).
        encoded = host.encode("idna")
    except UnicodeError:
        return "is not a valid DNS name (labels of 1-63 characters once IDNA-encoded)"
    if len(encoded.removesuffix(b".")) > MAX_HOST_NAME:
        return f"is longer than {MAX_HOST_NAME} characters"
    return None


def move_target_problem(target: Path, watch_dir: Path) -> str | None:
    """Why ``target`` cannot receive moved sources, or None.

    Inside WATCH_DIR a moved file would be discovered again and uploaded as a new stream,
    unless a hidden directory on the way hides it from discovery (SPEC §2.1).
    """
    tgt = Path(os.path.abspath(target))
    root = Path(os.path.abspath(watch_dir))
    real_tgt, real_root = Path(os.path.realpath(tgt)), Path(os.path.realpath(root))
    for t, r in ((tgt, root), (real_tgt, real_root)):
        if t == r:
            return "must not be WATCH_DIR itself"
        try:
            rel = t.relative_to(r)
        except ValueError:
            continue
        if not any(part.startswith(".") for part in rel.parts):
            return (
                f"{target} is inside WATCH_DIR, so moved files would be uploaded again; "
                "use a directory outside it (or a hidden one inside it)"
            )
    if tgt.exists() and not tgt.is_dir():
        return f"{target} is not a directory"
    return None
