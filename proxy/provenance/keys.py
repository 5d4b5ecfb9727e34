"""The farm's signing key, and the public keys it ever signed with.

The private key lives in the cache's private folder (``<cache>/private/signing``, mode 0700, the key file
0600), made at first start (ed25519), or is the operator's (``[provenance] key_file``: a PEM ed25519 or
ECDSA P-256 key). Builds never see it: workers start with an empty environment and every build step runs in a
sandbox that mounts nothing of the cache (tests/test_provenance.py tries). ``rotate`` makes a new key and
destroys the old private key; its public key stays in the keyring, marked retired, so what it signed stays
verifiable. The keyring is what ``/.well-known/wheelfarm/keys.json`` publishes.

Keys are securesystemslib's (``SSlibKey``: the key id is the sha256 of the key's canonical JSON), signing
is pyca/cryptography's through securesystemslib's ``CryptoSigner``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from securesystemslib.signer import CryptoSigner, Key, SSlibKey

KEYRING = "keyring.json"
CURRENT = "current.pem"


class UnusableKey(ValueError):
    """A key file that is not a usable signing key (named, with why)."""


@dataclass(frozen=True)
class KnownKey:
    key: Key
    created: float
    retired: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "keyid": self.key.keyid,
            "key": self.key.to_dict(),
            "public_key_pem": public_pem(self.key),
            "created": self.created,
            "retired": self.retired,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> KnownKey:
        return cls(Key.from_dict(str(data["keyid"]), dict(data["key"])), float(data["created"]),
                   None if data.get("retired") is None else float(data["retired"]))  # fmt: skip


@dataclass(frozen=True)
class FarmKeys:
    signer: CryptoSigner
    known: tuple[KnownKey, ...]  # every key this farm signed with, the current one among them

    @property
    def keyid(self) -> str:
        return str(self.signer.public_key.keyid)

    def published(self) -> dict[str, Any]:
        """What the well-known URL serves: the current key id, and every public key with its dates."""
        return {"current": self.keyid, "keys": [known.to_json() for known in self.known]}

    @classmethod
    def load(cls, folder: Path, key_file: Path | None = None) -> FarmKeys:
        """The farm's keys from ``folder`` (made if need be), signing with ``key_file`` when given.
        Blocking: call in a thread. Processes sharing the folder make one key between them."""
        with _locked(folder):
            known = _read_keyring(folder)
            if key_file is not None:
                signer = _signer_from(key_file)
            else:
                current = folder / CURRENT
                if not current.exists():
                    _write_private(current, ed25519.Ed25519PrivateKey.generate())
                signer = _signer_from(current)
            public = signer.public_key
            if all(each.key.keyid != public.keyid for each in known):
                known = [*known, KnownKey(public, time.time())]
                _write_keyring(folder, known)
            return cls(signer, tuple(known))

    @classmethod
    def rotate(cls, folder: Path) -> FarmKeys:
        """A new key for ``folder``; the old private key is destroyed, its public key kept as retired."""
        with _locked(folder):
            old = _signer_from(folder / CURRENT) if (folder / CURRENT).exists() else None
            now = time.time()
            known = [
                KnownKey(each.key, each.created, now)
                if old is not None and each.key.keyid == old.public_key.keyid and each.retired is None
                else each
                for each in _read_keyring(folder)
            ]
            fresh = ed25519.Ed25519PrivateKey.generate()
            _write_private(folder / CURRENT, fresh)  # replaces the old key file: its private key is gone
            signer = _signer_from(folder / CURRENT)
            known.append(KnownKey(signer.public_key, now))
            _write_keyring(folder, known)
            return cls(signer, tuple(known))


def public_pem(key: Key) -> str:
    """``key`` as PEM (SubjectPublicKeyInfo), for tools other than securesystemslib (openssl, cosign)."""
    public = str(key.keyval["public"])
    if key.keytype == "ed25519":  # securesystemslib keeps ed25519 keys as hex of the raw 32 bytes
        loaded: Any = ed25519.Ed25519PublicKey.from_public_bytes(bytes.fromhex(public))
    else:
        loaded = serialization.load_pem_public_key(public.encode())
    pem: bytes = loaded.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return pem.decode()


def _signer_from(path: Path) -> CryptoSigner:
    try:
        private = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise UnusableKey(f"{path} is not a PEM private key without a passphrase: {exc}") from None
    if isinstance(private, ec.EllipticCurvePrivateKey) and not isinstance(private.curve, ec.SECP256R1):
        raise UnusableKey(f"{path} is an ECDSA key on {private.curve.name}; ed25519 or P-256 are taken")
    if not isinstance(private, ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey):
        raise UnusableKey(f"{path} is a {type(private).__name__}; ed25519 or ECDSA P-256 keys are taken")
    return CryptoSigner(private, SSlibKey.from_crypto(private.public_key()))


def _write_private(path: Path, key: ed25519.Ed25519PrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(pem)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def _read_keyring(folder: Path) -> list[KnownKey]:
    try:
        data = orjson.loads((folder / KEYRING).read_bytes())
    except FileNotFoundError:
        return []
    return [KnownKey.from_json(each) for each in data["keys"]]


def _write_keyring(folder: Path, known: list[KnownKey]) -> None:
    temporary = folder / f".{KEYRING}.{os.getpid()}"
    temporary.write_bytes(
        orjson.dumps({"keys": [each.to_json() for each in known]}, option=orjson.OPT_INDENT_2)
    )
    os.replace(temporary, folder / KEYRING)


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(folder, 0o700)  # made by an older version, or by hand: nobody else reads a signing key
    os.chmod(folder.parent, 0o700)
    descriptor = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)
