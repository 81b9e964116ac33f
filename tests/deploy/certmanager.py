"""Offline checks of the cert-manager objects (cert-manager.io/v1 Issuer and Certificate).

manifestcheck decodes every other kind strictly into its Go type, but it is not built with cert-manager's API
module, so these kinds go through this schema instead: the fields of cert-manager v1's Issuer and Certificate
that a manifest of this project may use, with the enumerations of its API reference (key usages, key
algorithms, rotation policies). Unknown fields and wrong types fail, as they would in manifestcheck. The
cluster tier applies them to a real API server too, against CRD stubs (tests/cluster/test_deploy_manifests.py).
"""

from __future__ import annotations

from typing import Any

import jsonschema  # type: ignore[import-untyped]

from tests.deploy.tools import Obj

GROUP = "cert-manager.io"

KEY_USAGES = [
    "signing", "digital signature", "content commitment", "key encipherment", "key agreement",
    "data encipherment", "cert sign", "crl sign", "encipher only", "decipher only", "any", "server auth",
    "client auth", "code signing", "email protection", "s/mime", "ipsec end system", "ipsec tunnel",
    "ipsec user", "timestamping", "ocsp signing", "microsoft sgc", "netscape sgc",
]  # fmt: skip

_DURATION = {"type": "string", "pattern": r"^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$"}
_NAME = {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", "maxLength": 253}
_LABELS = {"type": "object", "additionalProperties": {"type": "string"}}
_STRINGS = {"type": "array", "items": {"type": "string"}}


def _closed(properties: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"type": "object", "additionalProperties": False, "properties": properties, "required": list(required)}


_METADATA = _closed({"name": _NAME, "namespace": _NAME, "labels": _LABELS, "annotations": _LABELS}, ("name",))
_ISSUER_REF = _closed(
    {"name": _NAME, "kind": {"enum": ["Issuer", "ClusterIssuer"]}, "group": {"const": GROUP}}, ("name",)
)
ISSUER_SCHEMA = _closed(
    {
        "apiVersion": {"const": f"{GROUP}/v1"},
        "kind": {"const": "Issuer"},
        "metadata": _METADATA,
        "spec": {
            **_closed(
                {
                    "selfSigned": _closed({"crlDistributionPoints": _STRINGS}),
                    "ca": _closed(
                        {"secretName": _NAME, "crlDistributionPoints": _STRINGS, "ocspServers": _STRINGS},
                        ("secretName",),
                    ),
                }
            ),
            "minProperties": 1,
            "maxProperties": 1,
        },
    },
    ("apiVersion", "kind", "metadata", "spec"),
)
CERTIFICATE_SCHEMA = _closed(
    {
        "apiVersion": {"const": f"{GROUP}/v1"},
        "kind": {"const": "Certificate"},
        "metadata": _METADATA,
        "spec": _closed(
            {
                "secretName": _NAME,
                "commonName": {"type": "string", "maxLength": 64},
                "dnsNames": {"type": "array", "items": {"type": "string", "minLength": 1}},
                "ipAddresses": {"type": "array", "items": {"type": "string"}},
                "isCA": {"type": "boolean"},
                "usages": {"type": "array", "items": {"enum": KEY_USAGES}, "uniqueItems": True},
                "duration": _DURATION,
                "renewBefore": _DURATION,
                "privateKey": _closed(
                    {
                        "algorithm": {"enum": ["RSA", "ECDSA", "Ed25519"]},
                        "size": {"type": "integer"},
                        "encoding": {"enum": ["PKCS1", "PKCS8"]},
                        "rotationPolicy": {"enum": ["Never", "Always"]},
                    }
                ),
                "issuerRef": _ISSUER_REF,
                "secretTemplate": _closed({"labels": _LABELS, "annotations": _LABELS}),
            },
            ("secretName", "issuerRef"),
        ),
    },
    ("apiVersion", "kind", "metadata", "spec"),
)
SCHEMAS = {"Issuer": ISSUER_SCHEMA, "Certificate": CERTIFICATE_SCHEMA}


def is_cert_manager(obj: Obj) -> bool:
    return str(obj.get("apiVersion", "")).startswith(f"{GROUP}/")


def validate(obj: Obj) -> None:
    """Raises jsonschema.ValidationError unless `obj` is an Issuer or Certificate this project may write."""
    schema = SCHEMAS.get(obj.get("kind", ""))
    if schema is None:
        raise jsonschema.ValidationError(f"unexpected cert-manager kind {obj.get('kind')!r}")
    jsonschema.Draft202012Validator(schema).validate(obj)
