"""The evidence settings (SPEC §1.2 third table, §2.22): Object Lock per object, server-side
encryption, the whole-object checksum, signed metadata.

A base of ``cefmp4.config.settings.Settings``, as ``FeatureSettings`` is. Every
combination that would silently protect less than asked is refused here, with the setting
named: a mode without days, days without a mode, a KMS key without ``aws:kms``, a signing
key that cannot be read or is not Ed25519. Whether the bucket has Object Lock is asked of
S3 at start-up and by ``check`` (``cefmp4.storage.protection``).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    load_pem_private_key,
    load_pem_public_key,
)
from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings

from cefmp4.core.signature import Signer

LockMode = Literal["GOVERNANCE", "COMPLIANCE"]
Sse = Literal["AES256", "aws:kms"]
FullObjectChecksum = Literal["off", "auto"]

# S3 accepts retention up to 100 years; a longer one is a typo, not a policy.
MAX_RETAIN_DAYS = 36_500
# A PEM key file is well under a kilobyte; a larger file is the wrong path.
_MAX_KEY_BYTES = 64 * 1024


class EvidenceSettings(BaseSettings):
    """Object Lock, SSE, the full-object checksum and the signing key (§2.22).

    Validator names start with ``_evidence_``: pydantic collects validators by attribute
    name across the bases of ``Settings``, so a name shared with ``FeatureSettings`` would
    silently replace one of them."""

    s3_object_lock_mode: LockMode | None = Field(
        None, description="GOVERNANCE or COMPLIANCE retention on every video and metadata object"
    )
    s3_object_lock_retain_days: int | None = Field(
        None, description="retention in days after completion; required with the mode"
    )
    s3_object_lock_legal_hold: bool = Field(
        False, description="legal hold ON for every video and metadata object"
    )
    s3_sse: Sse | None = Field(
        None, description="server-side encryption of every object written: AES256 or aws:kms"
    )
    s3_sse_kms_key_id: str = Field(
        "", description="KMS key of S3_SSE=aws:kms (id, alias or ARN); empty = the bucket's"
    )
    s3_full_object_checksum: FullObjectChecksum = Field(
        "off", description="auto: a CRC64NVME of the whole video that S3 verifies, where it can"
    )
    signing_key_file: str = Field(
        "", description="Ed25519 private key (PEM): every metadata document is signed"
    )

    @field_validator(
        "s3_object_lock_mode", "s3_object_lock_retain_days", "s3_sse", mode="before"
    )
    @classmethod
    def _evidence_empty_is_none(cls, v: Any) -> Any:
        return None if isinstance(v, str) and not v.strip() else v

    @field_validator("s3_object_lock_mode", mode="before")
    @classmethod
    def _evidence_mode_upper(cls, v: Any) -> Any:
        return v.strip().upper() if isinstance(v, str) else v

    @field_validator("s3_sse", mode="before")
    @classmethod
    def _evidence_sse_case(cls, v: Any) -> Any:
        # AWS spells them AES256 and aws:kms; any case is accepted here.
        if isinstance(v, str):
            return {"aes256": "AES256", "aws:kms": "aws:kms"}.get(v.strip().lower(), v)
        return v

    @field_validator("s3_full_object_checksum", mode="before")
    @classmethod
    def _evidence_checksum_lower(cls, v: Any) -> Any:
        return v.strip().lower() if isinstance(v, str) else v

    @field_validator("s3_object_lock_retain_days")
    @classmethod
    def _evidence_days(cls, v: int | None) -> int | None:
        if v is not None and not 0 < v <= MAX_RETAIN_DAYS:
            raise ValueError(f"must be between 1 and {MAX_RETAIN_DAYS} days")
        return v

    @field_validator("s3_sse_kms_key_id")
    @classmethod
    def _evidence_kms_key(cls, v: str) -> str:
        if v != v.strip() or any(c.isspace() for c in v):
            raise ValueError("must be a KMS key id, alias or ARN without spaces")
        return v

    @field_validator("signing_key_file")
    @classmethod
    def _evidence_signing_key(cls, v: str) -> str:
        if v:
            load_signer(v)  # ValueError naming what is wrong with the file
        return v

    @model_validator(mode="after")
    def _evidence_together(self) -> EvidenceSettings:
        if self.s3_object_lock_mode and self.s3_object_lock_retain_days is None:
            raise ValueError(
                "S3_OBJECT_LOCK_RETAIN_DAYS: must be set with S3_OBJECT_LOCK_MODE "
                "(retain-until = completion time + days)"
            )
        if self.s3_object_lock_retain_days is not None and not self.s3_object_lock_mode:
            raise ValueError(
                "S3_OBJECT_LOCK_MODE: must be GOVERNANCE or COMPLIANCE when "
                "S3_OBJECT_LOCK_RETAIN_DAYS is set"
            )
        if self.s3_sse_kms_key_id and self.s3_sse != "aws:kms":
            raise ValueError("S3_SSE: must be aws:kms when S3_SSE_KMS_KEY_ID is set")
        return self

    @property
    def object_lock_wanted(self) -> bool:
        """Retention or legal hold asked for: the bucket must have Object Lock."""
        return bool(self.s3_object_lock_mode) or self.s3_object_lock_legal_hold

    def signer(self) -> Signer | None:
        """The metadata signer of SIGNING_KEY_FILE, or None (read again: the key is never
        kept in the settings)."""
        return load_signer(self.signing_key_file) if self.signing_key_file else None


def _read_key_file(path: str) -> bytes:
    try:
        # A FIFO or a device would block or never end: only regular files.
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise ValueError(f"{path} is not a regular file")
        with open(path, "rb") as f:
            raw = f.read(_MAX_KEY_BYTES + 1)
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(raw) > _MAX_KEY_BYTES:
        raise ValueError(f"{path} is larger than {_MAX_KEY_BYTES} bytes")
    return raw


def load_signer(path: str) -> Signer:
    """The Ed25519 private key in the PEM file ``path`` (``openssl genpkey -algorithm
    ed25519``); ValueError saying why when it cannot be read or is not one."""
    raw = _read_key_file(path)
    try:
        key = load_pem_private_key(raw, password=None)
    except TypeError:
        raise ValueError(f"{path} is encrypted; give an unencrypted key") from None
    except ValueError:
        raise ValueError(f"{path} is not a PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} is not an Ed25519 key")
    return Signer(key)


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    """The Ed25519 public key in a PEM file: a public key (``openssl pkey -pubout``) or the
    private key itself. ValueError saying why otherwise."""
    raw = _read_key_file(str(path))
    if b"PRIVATE KEY" in raw:
        return load_signer(str(path)).private_key.public_key()
    try:
        key = load_pem_public_key(raw)
    except ValueError:
        raise ValueError(f"{path} is not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"{path} is not an Ed25519 key")
    return key
