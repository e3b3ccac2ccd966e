"""Keys and JSON Web Tokens for the RequestAuthentication tests.

  jwt_tool.py key DIR KID ALG     make a key for ALG (RS256, PS384, ES256,
                                  ES384, EdDSA, ...), its private half in
                                  DIR/KID.pem, its public half added to
                                  DIR/jwks.json
  jwt_tool.py drop DIR KID        take KID out of DIR/jwks.json (a rotation)
  jwt_tool.py sign DIR KID ALG CLAIMS [HEADER]
                                  print a token signed with DIR/KID.pem;
                                  CLAIMS and HEADER are JSON; an `exp`,
                                  `nbf` or `iat` given as "+N"/"-N" is N
                                  seconds from now
  jwt_tool.py forge DIR KID KIND CLAIMS
                                  print a token no verifier may accept:
                                  KIND is `none` (alg none, no signature),
                                  `hmac` (HS256 keyed with KID's public
                                  key), `tampered` (claims changed after
                                  signing with RS256), `as:NAMED:REAL`
                                  (signed with REAL, the header naming
                                  NAMED)
"""
import base64
import json
import os
import sys
import time

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def load_set(d):
    path = os.path.join(d, "jwks.json")
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    return {"keys": []}


def save_set(d, keys):
    path = os.path.join(d, "jwks.json")
    with open(path + ".new", "w") as f:
        json.dump(keys, f)
    os.replace(path + ".new", path)


def make_key(alg):
    if alg.startswith(("RS", "PS")):
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if alg == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if alg == "ES384":
        return ec.generate_private_key(ec.SECP384R1())
    if alg == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    raise SystemExit("unknown algorithm " + alg)


def public_jwk(key, kid, alg):
    public = key.public_key()
    if isinstance(public, ed25519.Ed25519PublicKey):
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        jwk = {"kty": "OKP", "crv": "Ed25519", "x": b64(raw)}
    else:
        jwk = json.loads(jwt.algorithms.get_default_algorithms()[alg].to_jwk(public))
    jwk.update({"kid": kid, "alg": alg, "use": "sig"})
    return jwk


def private_key(d, kid):
    with open(os.path.join(d, kid + ".pem"), "rb") as f:
        return serialization.load_pem_private_key(f.read(), password=None)


def claims_of(text):
    claims = json.loads(text)
    now = int(time.time())
    for k in ("exp", "nbf", "iat"):
        v = claims.get(k)
        if isinstance(v, str) and v[:1] in "+-":
            claims[k] = now + int(v)
    return claims


def main():
    cmd, d = sys.argv[1], sys.argv[2]
    if cmd == "key":
        kid, alg = sys.argv[3], sys.argv[4]
        key = make_key(alg)
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        with open(os.path.join(d, kid + ".pem"), "wb") as f:
            f.write(pem)
        keys = load_set(d)
        keys["keys"].append(public_jwk(key, kid, alg))
        save_set(d, keys)
    elif cmd == "drop":
        keys = load_set(d)
        keys["keys"] = [k for k in keys["keys"] if k.get("kid") != sys.argv[3]]
        save_set(d, keys)
    elif cmd == "sign":
        kid, alg, claims = sys.argv[3], sys.argv[4], claims_of(sys.argv[5])
        header = json.loads(sys.argv[6]) if len(sys.argv) > 6 else {}
        header.setdefault("kid", kid)
        if header["kid"] is None:
            del header["kid"]
        print(jwt.encode(claims, private_key(d, kid), algorithm=alg, headers=header))
    elif cmd == "forge":
        kid, kind, claims = sys.argv[3], sys.argv[4], claims_of(sys.argv[5])
        if kind == "none":
            head = b64(json.dumps({"alg": "none", "typ": "JWT", "kid": kid}).encode())
            print(head + "." + b64(json.dumps(claims).encode()) + ".")
        elif kind == "hmac":
            public = private_key(d, kid).public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            head = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
            body = b64(json.dumps(claims).encode())
            import hmac, hashlib
            sig = hmac.new(public, (head + "." + body).encode(), hashlib.sha256).digest()
            print(head + "." + body + "." + b64(sig))
        elif kind.startswith("as:"):
            # as:NAMED:REAL: the header names NAMED, the signature is REAL's.
            _, named, real = kind.split(":")
            head = b64(json.dumps({"alg": named, "typ": "JWT", "kid": kid}).encode())
            body = b64(json.dumps(claims).encode())
            algo = jwt.algorithms.get_default_algorithms()[real]
            sig = algo.sign((head + "." + body).encode(), algo.prepare_key(private_key(d, kid)))
            print(head + "." + body + "." + b64(sig))
        elif kind == "tampered":
            token = jwt.encode(claims, private_key(d, kid), algorithm="RS256", headers={"kid": kid})
            head, _, sig = token.split(".")
            claims["sub"] = "someone-else"
            print(head + "." + b64(json.dumps(claims).encode()) + "." + sig)
        else:
            raise SystemExit("unknown forgery " + kind)
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
