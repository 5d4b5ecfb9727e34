"""Signing a built wheel's statement, and the two documents that carry the signature:

- the attestation: a DSSE envelope (https://github.com/secure-systems-lab/dsse) whose payload is the
  in-toto statement (proxy/provenance/statement.py), signed with the farm's key; made and checked by
  securesystemslib's ``Envelope``;
- the PEP 740 provenance object that wraps it, which pages link from the built wheel's ``provenance`` key
  (PEP 691) or ``data-provenance`` attribute (HTML).

A PEP 740 attestation's ``envelope`` is the DSSE signature over the same PAE(payloadType, statement), so
the two carry one signature. Unlike PyPI's, whose verification material is a Sigstore (Fulcio) certificate
and transparency log entries, ours names the farm's key (``wheelfarm_keyid``), published at
``/.well-known/wheelfarm/keys.json``: a site key, checked by ``wheelfarm verify``; Sigstore verifiers
(pypi-attestations) do not accept it, by design, as it names no Fulcio identity.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from securesystemslib.dsse import Envelope
from securesystemslib.exceptions import VerificationError
from securesystemslib.signer import Key

from builder.jobs import BuildRecord
from proxy.provenance.keys import FarmKeys
from proxy.provenance.statement import PAYLOAD_TYPE, wheel_statement

KEYS_PATH = "/.well-known/wheelfarm/keys.json"
PUBLISHER_KIND = "wheelfarm"


@dataclass(frozen=True)
class Attestation:
    envelope: bytes  # the DSSE envelope, JSON
    pep740: bytes  # the PEP 740 provenance object, JSON


class Attestor:
    def __init__(self, keys: FarmKeys, builder_version: str) -> None:
        self.keys = keys
        self._builder_version = builder_version

    def attest(self, record: BuildRecord, facts: Mapping[str, Any]) -> Attestation:
        statement = wheel_statement(record, facts, self._builder_version)
        envelope = Envelope(orjson.dumps(statement, option=orjson.OPT_SORT_KEYS), PAYLOAD_TYPE, {})
        envelope.sign(self.keys.signer)
        (signature,) = envelope.signatures.values()
        pep740 = {
            "version": 1,
            "attestation_bundles": [
                {
                    "publisher": {
                        "kind": PUBLISHER_KIND,
                        "builder": record.made_by or "farm",
                        "keys": KEYS_PATH,
                    },
                    "attestations": [
                        {
                            "version": 1,
                            "verification_material": {
                                "wheelfarm_keyid": signature.keyid,
                                "transparency_entries": [],
                            },
                            "envelope": {
                                "statement": base64.b64encode(envelope.payload).decode(),
                                "signature": base64.b64encode(bytes.fromhex(signature.signature)).decode(),
                            },
                        }
                    ],
                }
            ],
        }
        return Attestation(
            orjson.dumps(envelope.to_dict(), option=orjson.OPT_INDENT_2),
            orjson.dumps(pep740, option=orjson.OPT_INDENT_2),
        )


class NotVerified(ValueError):
    """The attestation does not hold: named, with what did not match."""


def verified_statement(
    envelope_json: bytes, keys: Sequence[Key], wheel_name: str, wheel_sha256: str
) -> dict[str, Any]:
    """The statement of ``envelope_json`` once its signature verifies with one of ``keys`` and its subject is
    the wheel named ``wheel_name`` with ``wheel_sha256``; NotVerified naming the first thing that does not."""
    try:
        envelope = Envelope.from_dict(orjson.loads(envelope_json))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise NotVerified(f"the attestation is not a DSSE envelope: {exc}") from None
    if envelope.payload_type != PAYLOAD_TYPE:
        raise NotVerified(f"the envelope's payload is {envelope.payload_type!r}, not an in-toto statement")
    signed_by = {signature.keyid for signature in envelope.signatures.values()}
    known = [key for key in keys if key.keyid in signed_by]
    if not known:
        raise NotVerified(
            f"signed by unknown key(s) {', '.join(sorted(signed_by)) or '(none)'}: not the farm's"
        )
    try:
        envelope.verify(known, 1)
    except VerificationError as exc:
        raise NotVerified(f"the signature does not verify with the farm's key: {exc}") from None
    statement: dict[str, Any] = orjson.loads(envelope.payload)
    subjects = statement.get("subject") or []
    if not any(
        isinstance(each, dict)
        and each.get("name") == wheel_name
        and (each.get("digest") or {}).get("sha256") == wheel_sha256
        for each in subjects
    ):
        named = ", ".join(
            f"{s.get('name')} sha256 {(s.get('digest') or {}).get('sha256')}"
            for s in subjects
            if isinstance(s, dict)
        )
        raise NotVerified(
            f"the attestation is for {named or 'nothing'}, not {wheel_name} sha256 {wheel_sha256}"
        )
    return statement
