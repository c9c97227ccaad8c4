"""Configuration: environment, ``.env`` and ``run`` flags (flags win).

Built once by the CLI and passed down as values; nothing imports a settings instance.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import stat
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import SettingsConfigDict

from cefmp4.config.evidence_settings import EvidenceSettings
from cefmp4.config.feature_settings import (  # features block
    FEATURE_SECRETS,
    FeatureSettings,
    move_target_problem,
)
from cefmp4.config.settings_checks import (
    bucket_name_problem,
    normalize_key_prefix,
    redis_url_problem,
)
from cefmp4.config.uplink_settings import UplinkSettings
from cefmp4.core.parts import MAX_PART_SIZE, MAX_PARTS, MIB, MIN_PART_SIZE
from cefmp4.runtime.errors import ConfigError
from cefmp4.runtime.logs import redact

# S3's limits live in ``cefmp4.core.parts``; here in the settings' units.
S3_MIN_PART_MIB = MIN_PART_SIZE // MIB
S3_MAX_PART_MIB = MAX_PART_SIZE // MIB
S3_MAX_PARTS = MAX_PARTS

MAX_LEASE_TTL_SECONDS = 86_400  # a day; Redis rejects expiry times near 2**63 ms anyway

Limit = tuple[Callable[[float], bool], str]  # (holds for an accepted value, else this)
_MIN_PART = f"must be at least {S3_MIN_PART_MIB} (S3's minimum part size)"
_MAX_PART = f"must be at most {S3_MAX_PART_MIB} (S3's maximum part size)"
_PORT = "must be a TCP port (0-65535; 0 disables the server)"
_POSITIVE: tuple[Limit, ...] = ((lambda v: v > 0, "must be greater than 0"),)
_NOT_NEGATIVE: tuple[Limit, ...] = ((lambda v: v >= 0, "must not be negative"),)
_AT_LEAST_ONE: tuple[Limit, ...] = ((lambda v: v >= 1, "must be at least 1"),)
# The numeric settings' limits, checked in order by one validator (field -> limits).
LIMITS: dict[str, tuple[Limit, ...]] = {
    "chunk_size_mb": (
        (lambda v: v >= S3_MIN_PART_MIB, _MIN_PART), (lambda v: v <= S3_MAX_PART_MIB, _MAX_PART)
    ),
    "lease_ttl_seconds": (
        (lambda v: v >= 1, "must be at least 1 second"),
        (lambda v: v <= MAX_LEASE_TTL_SECONDS, f"must be at most {MAX_LEASE_TTL_SECONDS} seconds"),
    ),
    "max_parts": ((lambda v: 1 <= v <= S3_MAX_PARTS, f"must be between 1 and {S3_MAX_PARTS}"),),
    "prom_port": ((lambda v: 0 <= v <= 65535, _PORT),),
    **dict.fromkeys(
        ("stream_timeout_seconds", "poll_interval_seconds", "probe_timeout_seconds"), _POSITIVE
    ),
    **dict.fromkeys(
        ("shutdown_grace_seconds", "abort_orphan_uploads_after_hours", "rescan_interval_seconds"),
        _NOT_NEGATIVE,
    ),
    **dict.fromkeys(("max_inflight_mb", "upload_concurrency", "max_streams"), _AT_LEAST_ONE),
}

# S3's bucket naming rules (general purpose buckets): 3-63 characters of lower-case
# letters, digits, dots and hyphens, starting and ending with a letter or digit.
# botocore's own pattern for region names.
_REGION = re.compile(r"[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?")
_HOSTNAME = re.compile(r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                       r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?")
_STORAGE_CLASS = re.compile(r"[A-Z][A-Z0-9_]{0,63}")
_NO_CONTROL_CHARACTERS = frozenset({
    "s3_access_key_id", "s3_secret_access_key", "s3_key_prefix", "s3_endpoint_url",
    "redis_url", "redis_key_prefix", "instance_id", "s3_storage_class", "prom_host",
})  # fmt: skip
MAX_NAME_LENGTH = 256

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
LogFormat = Literal["auto", "json", "console"]


class Settings(FeatureSettings, EvidenceSettings, UplinkSettings):  # was BaseSettings
    """Every setting of cefmp4. Field names upper-cased are the environment variables."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
        case_sensitive=False,
    )

    # --- the seed's settings (SPEC §1.2) -------------------------------------------------
    watch_dir: Path = Field(Path("./input-videos"), description="directory to watch (recursively)")
    chunk_size_mb: int = Field(
        10, description="part size in MiB (>= 5, S3's minimum part size)"
    )
    stream_timeout_seconds: float = Field(
        30.0, description="a stream with no growth for this long is complete"
    )
    s3_endpoint_url: str = Field("", description="S3 endpoint; empty means AWS")
    s3_access_key_id: SecretStr = Field(
        SecretStr(""), description="empty means the normal AWS credential chain"
    )
    s3_secret_access_key: SecretStr = Field(
        SecretStr(""), description="empty means the normal AWS credential chain"
    )
    s3_bucket_name: str = Field("video-streams", description="created on start if missing")
    s3_region_name: str = Field("", description="S3 region; empty means the SDK default")
    s3_key_prefix: str = Field(
        "streams/", description="prefix of every object key; a path segment (streams = streams/)"
    )
    s3_key_prefix_whole_bucket: bool = Field(
        False, description="allow an empty S3_KEY_PREFIX: every key of the bucket is cefmp4's"
    )
    redis_url: SecretStr = Field(
        SecretStr(""), description="redis:// or rediss:// URL; empty means embedded SQLite"
    )
    redis_key_prefix: str = Field(
        "cefmp4:", description="prefix of every Redis key (several deployments can share one Redis)"
    )
    state_dir: Path = Field(Path("./.cefmp4"), description="where the embedded store lives")
    log_level: LogLevel = Field("INFO", description="DEBUG, INFO, WARNING, ERROR")
    log_format: LogFormat = Field("auto", description="json, console or auto")
    prom_port: int = Field(8000, description="port of /metrics, /healthz, /readyz; 0 disables")
    prom_host: str = Field(
        "0.0.0.0", description="bind address of the HTTP server (IPv4, IPv6 such as ::, or a name)"
    )
    ffprobe_path: str = Field("", description="explicit ffprobe; empty means ffprobe on PATH")

    # --- further settings ----------------------------------------------------------------
    max_inflight_mb: int = Field(
        64, description="global cap on part bytes being read or sent at once, all streams (MiB)"
    )
    upload_concurrency: int = Field(
        4, description="parts uploaded at once across all streams"
    )
    poll_interval_seconds: float = Field(
        1.0, description="how often an active stream re-checks its file without an event"
    )
    watch_force_polling: bool = Field(
        False, description="poll the watch dir instead of inotify (NFS and other network mounts)"
    )
    probe_timeout_seconds: float = Field(60.0, description="ffprobe time limit per file")
    shutdown_grace_seconds: float = Field(
        20.0, description="how long in-flight parts may finish after SIGTERM"
    )
    s3_storage_class: str = Field("", description="storage class of the objects; empty = default")
    abort_orphan_uploads_after_hours: float = Field(
        48.0, description="abort unknown uploads under the prefix older than this; 0 = never"
    )
    instance_id: str = Field(
        "", description="name of this instance in leases and logs; empty = host:pid-namespace:pid"
    )
    lease_ttl_seconds: float = Field(
        15.0, description="a stream whose owner stops renewing for this long is taken over"
    )
    max_streams: int = Field(
        64, description="streams this instance works on at once (new files wait for room)"
    )
    max_parts: int = Field(
        S3_MAX_PARTS, description="part limit per object (10,000 in S3; lower only for testing)"
    )
    rescan_interval_seconds: float = Field(
        60.0, description="look at the whole watch dir this often (what inotify missed); 0 = off"
    )
    cefmp4_failpoints: str = Field(
        "", description="testing only: crash at these step boundaries (comma-separated)"
    )

    @field_validator("*", mode="before")
    @classmethod
    def _text_is_utf8(cls, v: Any, info: ValidationInfo) -> Any:
        # A value from a non-UTF-8 environment arrives surrogate-escaped; it could never be
        # sent to S3 or Redis. Paths are exempt: the file system takes any bytes.
        field = cls.model_fields.get(info.field_name or "")
        if not isinstance(v, str):
            return v
        if "\x00" in v:
            raise ValueError("must not contain a NUL character")
        if field is None or field.annotation is not Path:
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError("is not valid UTF-8") from None
        if info.field_name in _NO_CONTROL_CHARACTERS and any(
            unicodedata.category(ch) == "Cc" for ch in v
        ):
            # A newline in a credential is a file-reading accident and would break the
            # HTTP header it goes into; in a key prefix it breaks S3's XML listings.
            raise ValueError("must not contain control characters (newline, tab, ...)")
        return v

    @field_validator("s3_access_key_id", "instance_id", mode="before")
    @classmethod
    def _no_spaces(cls, v: Any) -> Any:
        if isinstance(v, str) and any(ch.isspace() for ch in v):
            raise ValueError("must not contain spaces")
        if isinstance(v, str) and len(v) > MAX_NAME_LENGTH:
            raise ValueError(f"must be at most {MAX_NAME_LENGTH} characters")
        return v

    @field_validator("s3_storage_class")
    @classmethod
    def _storage_class(cls, v: str) -> str:
        if v and not _STORAGE_CLASS.fullmatch(v):
            raise ValueError("must be a storage class name such as STANDARD_IA")
        return v

    @field_validator("*", mode="after")
    @classmethod
    def _finite(cls, v: Any) -> Any:
        # float("inf") and float("nan") parse; every timeout and interval must be a number.
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError("must be a finite number")
        return v

    # --- secrets from files (Docker/Kubernetes secrets; SPEC §1.2) -------------------------
    # Owned with cli.refuse_secret_flags: a secret never has to be a flag or an environment
    # variable. Read once, here; the value then lives only in the SecretStr field above.
    s3_access_key_id_file: str = Field(
        "", description="read S3_ACCESS_KEY_ID from this file (trailing newline trimmed)"
    )
    s3_secret_access_key_file: str = Field(
        "", description="read S3_SECRET_ACCESS_KEY from this file (trailing newline trimmed)"
    )
    redis_url_file: str = Field(
        "", description="read REDIS_URL from this file (trailing newline trimmed)"
    )

    @model_validator(mode="before")
    @classmethod
    def _read_secret_files(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        values = dict(data)
        for secret, file_field in SECRET_FILES.items():
            path = _raw_str(values.get(file_field))
            if not path:
                continue
            if _raw_str(values.get(secret)):
                raise ValueError(
                    f"{env_name(file_field)}: give {env_name(secret)} or "
                    f"{env_name(file_field)}, not both"
                )
            values[secret] = read_secret_file(env_name(file_field), path)
        return values
    # --- end of secrets from files ---------------------------------------------------------

    @field_validator("cefmp4_failpoints")
    @classmethod
    def _failpoints(cls, v: str) -> str:
        from cefmp4.runtime.failpoints import Failpoints

        Failpoints(v)  # ValueError naming the unknown point
        return v

    @field_validator(*LIMITS)
    @classmethod
    def _within_limits(cls, v: float, info: ValidationInfo) -> float:
        for ok, problem in LIMITS[info.field_name or ""]:
            if not ok(v):
                raise ValueError(problem)
        return v

    @field_validator("rescan_interval_seconds")
    @classmethod
    def _rescan(cls, v: float) -> float:
        if 0 < v < 1:
            raise ValueError("must be 0 (off) or at least 1 second (a scan reads the whole tree)")
        return v

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, v: Any) -> Any:
        return v.upper() if isinstance(v, str) else v

    @field_validator("log_format", mode="before")
    @classmethod
    def _lower(cls, v: Any) -> Any:
        return v.lower() if isinstance(v, str) else v

    @field_validator("s3_key_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        return normalize_key_prefix(v)

    @field_validator("s3_bucket_name")
    @classmethod
    def _bucket(cls, v: str) -> str:
        problem = bucket_name_problem(v)
        if problem:
            raise ValueError(problem)
        return v

    @field_validator("s3_region_name")
    @classmethod
    def _region(cls, v: str) -> str:
        if v and not _REGION.fullmatch(v):
            raise ValueError("must be a region name such as us-east-1")
        return v

    @field_validator("s3_endpoint_url")
    @classmethod
    def _endpoint(cls, v: str) -> str:
        if not v:
            return v
        try:
            parts = urlsplit(v)
            parts.port  # noqa: B018  (raises ValueError for a port that is not a number)
        except ValueError:
            raise ValueError("must be a URL such as http://host:9000") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be a URL with scheme and host, such as http://host:9000")
        if parts.username or parts.password:
            raise ValueError("must not carry credentials; use S3_ACCESS_KEY_ID/SECRET")
        return v

    @field_validator("prom_host")
    @classmethod
    def _prom_host(cls, v: str) -> str:
        host = v.strip()
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        try:
            ipaddress.ip_address(host)
        except ValueError:
            if not _HOSTNAME.fullmatch(host):
                raise ValueError("must be an IP address (0.0.0.0, ::) or a host name") from None
        return host

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, v: SecretStr) -> SecretStr:
        # The message never repeats the URL: it may carry a password.
        problem = redis_url_problem(v.get_secret_value())
        if problem:
            raise ValueError(problem)
        return v

    @model_validator(mode="after")
    def _empty_prefix(self) -> Settings:
        if not self.s3_key_prefix and not self.s3_key_prefix_whole_bucket:
            raise ValueError(
                "S3_KEY_PREFIX: must not be empty (the orphan sweeper would own the whole "
                "bucket); set S3_KEY_PREFIX_WHOLE_BUCKET=true if every key is cefmp4's"
            )
        return self

    @model_validator(mode="after")
    def _inflight_fits_a_part(self) -> Settings:
        if self.max_inflight_mb < self.chunk_size_mb:
            raise ValueError(
                "MAX_INFLIGHT_MB: must be at least CHUNK_SIZE_MB "
                f"({self.chunk_size_mb}), or no part could ever be read"
            )
        return self

    # --- features (#12): the recorder settings are in FeatureSettings (feature_settings.py);
    # this cross-field check needs WATCH_DIR and REDIS_URL from here.
    @model_validator(mode="after")
    def _features(self) -> Settings:
        if self.after_upload == "move":
            if self.after_upload_dir is None:
                raise ValueError("AFTER_UPLOAD_DIR: must be set when AFTER_UPLOAD=move")
            problem = move_target_problem(self.after_upload_dir, self.watch_dir)
            if problem:
                raise ValueError(f"AFTER_UPLOAD_DIR: {problem}")
        if self.notify_redis_stream and not self.redis_url.get_secret_value():
            raise ValueError(
                "NOTIFY_REDIS_STREAM: needs REDIS_URL (the stream lives in that Redis)"
            )
        return self

    # --- end of the features block --------------------------------------------------------

    @property
    def part_size_bytes(self) -> int:
        return self.chunk_size_mb * MIB

    @property
    def max_inflight_bytes(self) -> int:
        return self.max_inflight_mb * MIB


# Never repeated in a configuration error: secrets, and a KMS key ARN (it names the account;
# cefmp4 shows it masked, cefmp4.storage.protection.mask_kms_key_id).
_SECRET = {"S3_ACCESS_KEY_ID", "S3_SECRET_ACCESS_KEY", "REDIS_URL", "S3_SSE_KMS_KEY_ID"} | (
    FEATURE_SECRETS
)

# --- secrets from files (see Settings._read_secret_files) -----------------------------------
# secret field -> the field naming the file it can be read from
SECRET_FILES: dict[str, str] = {
    "s3_access_key_id": "s3_access_key_id_file",
    "s3_secret_access_key": "s3_secret_access_key_file",
    "redis_url": "redis_url_file",
}
# A secret file is a few bytes; a larger one is a wrong path (a video, a device).
_MAX_SECRET_BYTES = 64 * 1024


def _raw_str(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    return str(value)


def read_secret_file(setting: str, path: str) -> str:
    """The secret in ``path`` without its trailing newline; ConfigError naming ``setting``."""
    try:
        # A FIFO or a device would block or never end: only regular files (Kubernetes'
        # secret files are symlinks to regular files, which stat follows).
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise ValueError(f"{setting}: {path} is not a regular file")
        with open(path, "rb") as f:
            raw = f.read(_MAX_SECRET_BYTES + 1)
    except OSError as exc:
        raise ValueError(f"{setting}: cannot read {path}: {exc.strerror or exc}") from None
    if len(raw) > _MAX_SECRET_BYTES:
        raise ValueError(f"{setting}: {path} is larger than {_MAX_SECRET_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{setting}: {path} is not UTF-8 text") from None
    # One trailing newline (echo, editors, kubectl create secret --from-file); nothing else,
    # since leading or inner spaces may belong to the secret.
    text = text.removesuffix("\n").removesuffix("\r")
    if not text.strip():
        raise ValueError(f"{setting}: {path} is empty")
    if "\n" in text:
        raise ValueError(f"{setting}: {path} holds more than one line")
    return text
# --- end of secrets from files --------------------------------------------------------------


def env_name(field: str) -> str:
    return field.upper()


def load_settings(**overrides: Any) -> Settings:
    """Build Settings from env/.env plus explicit overrides; bad input → ConfigError."""
    try:
        return Settings(**overrides)
    except UnicodeDecodeError:
        raise ConfigError(".env", "is not valid UTF-8 text") from None
    except OSError as exc:  # a .env that exists but cannot be read
        raise ConfigError(".env", f"cannot be read: {exc.strerror or exc}") from None
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = err.get("loc") or ()
        msg = str(err.get("msg", "invalid value"))
        msg = msg.removeprefix("Value error, ")
        if loc:
            setting = env_name(str(loc[0]))
        elif ":" in msg:
            setting, _, msg = (part.strip() for part in msg.partition(":"))
        else:
            setting = "configuration"
        given = err.get("input")
        if loc and given is not None and not isinstance(given, dict) and setting not in _SECRET:
            msg = f"{msg} (got {given!r})"
        # A URL setting may carry a password even when it is not one of the secrets.
        raise ConfigError(setting, redact(msg)) from None


def check_watch_dir(path: Path) -> None:
    """The watch dir must exist (or be creatable) and be readable."""
    if path.exists() and not path.is_dir():
        raise ConfigError("WATCH_DIR", f"{path} is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError("WATCH_DIR", f"cannot create {path}: {exc.strerror}") from None
    if not path.is_dir():
        raise ConfigError("WATCH_DIR", f"{path} is not a directory")
    if not os.access(path, os.R_OK | os.X_OK):
        raise ConfigError("WATCH_DIR", f"{path} is not readable")
