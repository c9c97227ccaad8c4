"""Signed metadata (SPEC §1.4): the canonical form byte for byte, the key id, and the
signature, checked against references that are not cefmp4's code: RFC 8032's test key,
the json module with the spec's parameters, and the openssl command line."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from cefmp4.config.evidence_settings import load_public_key, load_signer
from cefmp4.core.metadata import to_json_bytes
from cefmp4.core.signature import (
    Signer,
    Verdict,
    canonical_json,
    check_signature,
    key_id,
)

# RFC 8032 §7.1, TEST 1: secret key and the public key it derives.
RFC_SECRET = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
RFC_PUBLIC = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")

DOC: dict[str, object] = {
    "stream_id": "b7e1",
    "original_file_path": "/srv/cams/Überwachung/監視カメラ · nuit.mp4",
    "s3_key": "streams/b7e1/Überwachung/監視カメラ · nuit.mp4",
    "total_size_bytes": 10_485_766,
    "duration_seconds": 12.5,
    "chunks": [{"part_number": 1, "size_bytes": 5, "etag": "e"}],
    "zeta": None,
    "alpha": {"b": 2, "a": [1, "ü"]},
}


def _signer() -> Signer:
    return Signer(Ed25519PrivateKey.from_private_bytes(RFC_SECRET))


def test_the_canonical_form_is_sorted_compact_utf8_without_the_signature() -> None:
    signed = _signer().sign(DOC)
    canonical = canonical_json(signed)
    # The spec's parameters, spelled out here rather than taken from cefmp4.
    expected = json.dumps(DOC, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert canonical == expected.encode("utf-8")
    text = canonical.decode("utf-8")
    assert text.startswith('{"alpha":{"a":[1,"ü"],"b":2},"chunks":[{"etag":"e",')
    assert "監視カメラ" in text
    assert "\\u" not in text
    assert " " not in text.replace("Überwachung/監視カメラ · nuit", "")  # no white space
    assert "signature" not in text


def test_key_id_is_the_first_16_hex_digits_of_the_sha256_of_the_raw_public_key() -> None:
    signer = _signer()
    assert signer.private_key.public_key().public_bytes_raw() == RFC_PUBLIC
    assert signer.key_id == hashlib.sha256(RFC_PUBLIC).hexdigest()[:16]
    assert len(signer.key_id) == 16


def test_a_signed_document_verifies_with_the_public_key_alone() -> None:
    signed = _signer().sign(DOC)
    sig = signed["signature"]
    assert isinstance(sig, dict)
    assert sig["alg"] == "ed25519"
    assert sig["key_id"] == key_id(Ed25519PublicKey.from_public_bytes(RFC_PUBLIC))
    # Verified with nothing but the RFC's public key bytes and the canonical bytes.
    public = Ed25519PublicKey.from_public_bytes(RFC_PUBLIC)
    public.verify(base64.b64decode(sig["value"]), canonical_json(signed))
    assert check_signature(signed, public).verdict is Verdict.OK


def test_whitespace_of_the_stored_document_does_not_matter_its_values_do() -> None:
    public = Ed25519PublicKey.from_public_bytes(RFC_PUBLIC)
    stored = to_json_bytes(_signer().sign(DOC))  # indented, as cefmp4 writes it
    assert b"\n  " in stored
    doc = json.loads(stored)
    assert check_signature(doc, public).verdict is Verdict.OK
    doc["original_file_path"] = doc["original_file_path"].replace("nuit", "jour")
    check = check_signature(doc, public)
    assert check.verdict is Verdict.BAD
    assert "changed" in check.reason


@pytest.mark.parametrize(
    ("change", "verdict"),
    [
        (lambda d: d.pop("signature"), Verdict.UNSIGNED),
        (lambda d: d.update(total_size_bytes=10_485_767), Verdict.BAD),
        (lambda d: d.update(extra="added later"), Verdict.BAD),
        (lambda d: d["signature"].update(alg="rsa"), Verdict.BAD),
        (lambda d: d["signature"].update(value="not base64!"), Verdict.BAD),
        (lambda d: d.update(signature="a string"), Verdict.BAD),
    ],
    ids=["removed", "value", "field-added", "algorithm", "not-base64", "not-an-object"],
)
def test_changes_to_a_signed_document_are_caught(change: object, verdict: Verdict) -> None:
    public = Ed25519PublicKey.from_public_bytes(RFC_PUBLIC)
    doc = json.loads(to_json_bytes(_signer().sign(DOC)))
    change(doc)  # type: ignore[operator]
    assert check_signature(doc, public).verdict is verdict


def test_another_key_is_a_bad_signature_naming_both_key_ids() -> None:
    other = Ed25519PrivateKey.generate().public_key()
    check = check_signature(_signer().sign(DOC), other)
    assert check.verdict is Verdict.BAD
    assert _signer().key_id in check.reason
    assert key_id(other) in check.reason


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")
def test_keys_from_openssl_sign_what_openssl_verifies(tmp_path: Path) -> None:
    """The README's workflow: keys made by openssl, the signature checked by openssl."""
    key, pub = tmp_path / "key.pem", tmp_path / "pub.pem"
    subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", str(key)], check=True)
    subprocess.run(["openssl", "pkey", "-in", str(key), "-pubout", "-out", str(pub)], check=True)
    signer = load_signer(str(key))
    signed = signer.sign(DOC)
    assert key_id(load_public_key(pub)) == signer.key_id
    assert check_signature(signed, load_public_key(pub)).verdict is Verdict.OK
    message, sig = tmp_path / "canonical.json", tmp_path / "sig.bin"
    message.write_bytes(canonical_json(json.loads(to_json_bytes(signed))))
    sig_value = signed["signature"]
    assert isinstance(sig_value, dict)
    sig.write_bytes(base64.b64decode(sig_value["value"]))
    verified = subprocess.run(
        ["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", str(pub), "-rawin",
         "-in", str(message), "-sigfile", str(sig)],
        capture_output=True, text=True, check=False,
    )
    assert verified.returncode == 0, verified.stderr
    assert "Success" in verified.stdout
    message.write_bytes(message.read_bytes().replace(b"nuit", b"jour"))  # the control
    refused = subprocess.run(
        ["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", str(pub), "-rawin",
         "-in", str(message), "-sigfile", str(sig)],
        capture_output=True, text=True, check=False,
    )
    assert refused.returncode != 0
