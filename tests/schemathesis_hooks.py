"""What schemathesis sends where a route takes a PEM body (`SCHEMATHESIS_HOOKS=schemathesis_hooks`):
public keys (the only thing stored), a private key, and bytes that are no key at all."""

from __future__ import annotations

import schemathesis
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import strategies as st

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
PUBLIC = serialization.PublicFormat.SubjectPublicKeyInfo
KEYS = [
    RSA_KEY.public_key().public_bytes(serialization.Encoding.PEM, PUBLIC),
    EC_KEY.public_key().public_bytes(serialization.Encoding.PEM, PUBLIC),
    RSA_KEY.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
]

schemathesis.openapi.media_type("application/x-pem-file", st.sampled_from(KEYS) | st.binary(max_size=512))
