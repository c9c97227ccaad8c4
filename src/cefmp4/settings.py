"""Configuration: environment, ``.env`` and ``run`` flags (flags win).

Built once by the CLI and passed down as values; nothing imports a settings instance.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from cefmp4.errors import ConfigError
from cefmp4.parts import MAX_PART_SIZE, MAX_PARTS, MIB, MIN_PART_SIZE

# S3's limits live in ``cefmp4.parts``; here in the settings' units.
S3_MIN_PART_MIB = MIN_PART_SIZE // MIB
S3_MAX_PART_MIB = MAX_PART_SIZE // MIB
S3_MAX_PARTS = MAX_PARTS

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
LogFormat = Literal["auto", "json", "console"]


class Settings(BaseSettings):
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
    s3_key_prefix: str = Field("streams/", description="prefix of every object key")
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

    @field_validator("chunk_size_mb")
    @classmethod
    def _chunk_size(cls, v: int) -> int:
        if v < S3_MIN_PART_MIB:
            raise ValueError(f"must be at least {S3_MIN_PART_MIB} (S3's minimum part size)")
        if v > S3_MAX_PART_MIB:
            raise ValueError(f"must be at most {S3_MAX_PART_MIB} (S3's maximum part size)")
        return v

    @field_validator("stream_timeout_seconds", "poll_interval_seconds", "probe_timeout_seconds")
    @classmethod
    def _positive_float(cls, v: float) -> float:
        if not v > 0:
            raise ValueError("must be greater than 0")
        return v

    @field_validator("cefmp4_failpoints")
    @classmethod
    def _failpoints(cls, v: str) -> str:
        from cefmp4.failpoints import Failpoints

        Failpoints(v)  # ValueError naming the unknown point
        return v

    @field_validator(
        "shutdown_grace_seconds", "abort_orphan_uploads_after_hours", "rescan_interval_seconds"
    )
    @classmethod
    def _non_negative(cls, v: float) -> float:
        if v < 0:
            raise ValueError("must not be negative")
        return v

    @field_validator("lease_ttl_seconds")
    @classmethod
    def _lease_ttl(cls, v: float) -> float:
        if v < 1:
            raise ValueError("must be at least 1 second")
        return v

    @field_validator("max_inflight_mb", "upload_concurrency", "max_streams")
    @classmethod
    def _positive_int(cls, v: int) -> int:
        if v < 1:
            raise ValueError("must be at least 1")
        return v

    @field_validator("max_parts")
    @classmethod
    def _max_parts(cls, v: int) -> int:
        if not 1 <= v <= S3_MAX_PARTS:
            raise ValueError(f"must be between 1 and {S3_MAX_PARTS}")
        return v

    @field_validator("prom_port")
    @classmethod
    def _port(cls, v: int) -> int:
        if not 0 <= v <= 65535:
            raise ValueError("must be a TCP port (0-65535; 0 disables the server)")
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
        if v.startswith("/"):
            raise ValueError("must not start with '/'")
        return v

    @field_validator("s3_bucket_name")
    @classmethod
    def _bucket(cls, v: str) -> str:
        if not 3 <= len(v) <= 63:
            raise ValueError("must be 3 to 63 characters long")
        return v

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, v: SecretStr) -> SecretStr:
        url = v.get_secret_value()
        if url and not url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return v

    @model_validator(mode="after")
    def _inflight_fits_a_part(self) -> Settings:
        if self.max_inflight_mb < self.chunk_size_mb:
            raise ValueError(
                "MAX_INFLIGHT_MB: must be at least CHUNK_SIZE_MB "
                f"({self.chunk_size_mb}), or no part could ever be read"
            )
        return self

    @property
    def part_size_bytes(self) -> int:
        return self.chunk_size_mb * MIB

    @property
    def max_inflight_bytes(self) -> int:
        return self.max_inflight_mb * MIB


_SECRET = {"S3_ACCESS_KEY_ID", "S3_SECRET_ACCESS_KEY", "REDIS_URL"}


def env_name(field: str) -> str:
    return field.upper()


def load_settings(**overrides: Any) -> Settings:
    """Build Settings from env/.env plus explicit overrides; bad input → ConfigError."""
    try:
        return Settings(**overrides)
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
        raise ConfigError(setting, msg) from None


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
