"""Signed metadata (SPEC §1.4, §2.22): the canonical form of a document and its Ed25519
signature. Pure: keys are given as objects, never read here.

The signature covers the canonical form of the document *without* its ``signature``
field: JSON with sorted keys, separators ``,`` and ``:``, no ASCII escaping, UTF-8. The
document as stored may be indented (``metadata.to_json_bytes``): a verifier parses it and
builds the canonical form again, so whitespace never matters, every value does.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

SIGNATURE_FIELD: Final = "signature"
ALGORITHM: Final = "ed25519"


def canonical_json(doc: Mapping[str, object]) -> bytes:
    """The bytes a signature covers: ``doc`` less its ``signature`` field, keys sorted at
    every depth, no white space, non-ASCII as UTF-8 (not ``\\u`` escapes)."""
    unsigned = {k: v for k, v in doc.items() if k != SIGNATURE_FIELD}
    return json.dumps(
        unsigned, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def raw_public_key(key: Ed25519PublicKey) -> bytes:
    """The 32 bytes of an Ed25519 public key (RFC 8032 encoding)."""
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def key_id(key: Ed25519PublicKey) -> str:
    """First 16 hex digits of the SHA-256 of the raw 32-byte public key."""
    return hashlib.sha256(raw_public_key(key)).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class Signer:
    """Signs metadata documents with one private key."""

    private_key: Ed25519PrivateKey

    @property
    def key_id(self) -> str:
        return key_id(self.private_key.public_key())

    def sign(self, doc: Mapping[str, object]) -> dict[str, object]:
        """``doc`` with its ``signature`` field (any old one replaced)."""
        value = self.private_key.sign(canonical_json(doc))
        return {
            **{k: v for k, v in doc.items() if k != SIGNATURE_FIELD},
            SIGNATURE_FIELD: {
                "alg": ALGORITHM,
                "key_id": self.key_id,
                "value": base64.b64encode(value).decode("ascii"),
            },
        }


class Verdict(enum.StrEnum):
    """What a signature check says of a document."""

    OK = "ok"
    UNSIGNED = "unsigned"  # no signature field
    BAD = "bad"  # malformed, another algorithm or key, or the bytes do not verify


@dataclass(frozen=True, slots=True)
class SignatureCheck:
    verdict: Verdict
    reason: str = ""


def check_signature(doc: Mapping[str, Any], public_key: Ed25519PublicKey) -> SignatureCheck:
    """Is ``doc`` signed by ``public_key``, unchanged since? The reason names what failed."""
    sig = doc.get(SIGNATURE_FIELD)
    if sig is None:
        return SignatureCheck(Verdict.UNSIGNED, "no signature field")
    if not isinstance(sig, Mapping):
        return SignatureCheck(Verdict.BAD, "signature is not an object")
    if sig.get("alg") != ALGORITHM:
        return SignatureCheck(Verdict.BAD, f"algorithm {sig.get('alg')!r} is not {ALGORITHM}")
    expected_id = key_id(public_key)
    if sig.get("key_id") != expected_id:
        return SignatureCheck(
            Verdict.BAD, f"signed by key {sig.get('key_id')!r}, not {expected_id}"
        )
    value = sig.get("value")
    if not isinstance(value, str):
        return SignatureCheck(Verdict.BAD, "signature value is not a string")
    try:
        raw = base64.b64decode(value, validate=True)
        public_key.verify(raw, canonical_json(doc))
    except (binascii.Error, ValueError):
        return SignatureCheck(Verdict.BAD, "signature value is not base64")
    except InvalidSignature:
        return SignatureCheck(Verdict.BAD, "the document changed since it was signed")
    except RecursionError:  # parsed just under Python's depth: too deep to serialise again
        return SignatureCheck(Verdict.BAD, "the document is nested too deeply to check")
    return SignatureCheck(Verdict.OK)
