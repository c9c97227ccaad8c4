"""The uplink settings (SPEC §1.2 third table, §2.21): ``UPLOAD_BWLIMIT`` and
``UPLOAD_ORDER``. A base of ``cefmp4.config.settings.Settings``, as ``FeatureSettings`` is;
the parsing is ``cefmp4.core.uplink``'s, so a bad value is one line naming the setting.

Validator names start with ``_uplink_``: pydantic collects validators by attribute name
across the bases of ``Settings``, so a name shared with another base would silently
replace one of them.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings

from cefmp4.core.uplink import Order, Timetable, parse_bwlimit


class UplinkSettings(BaseSettings):
    """A cap on the bytes sent to S3, and the backlog's order."""

    upload_bwlimit: str = Field(
        "", description="cap on the bytes per second sent to S3, all streams: 4M, 512k, or a "
        "timetable \"08:00,512k 19:00,8M 23:00,off\" (local time); empty or off = no limit"
    )
    upload_order: Order = Field(
        "oldest", description="the backlog (files not growing) goes oldest or newest first by "
        "mtime; live recordings always go first"
    )

    @field_validator("upload_bwlimit", mode="before")
    @classmethod
    def _uplink_bwlimit(cls, v: Any) -> Any:
        if isinstance(v, str):
            parse_bwlimit(v)  # ValueError: one line, named by the settings' error handler
            return " ".join(v.split())
        return v

    @field_validator("upload_order", mode="before")
    @classmethod
    def _uplink_order(cls, v: Any) -> Any:
        return v.strip().lower() if isinstance(v, str) else v

    @property
    def bwlimit(self) -> Timetable | None:
        """The timetable of ``UPLOAD_BWLIMIT``; None: no limit, ever."""
        return parse_bwlimit(self.upload_bwlimit)
