"""NATS decentralized auth (JWT and NKeys) for the tests, without `nsc`: an
operator, an account and a user, each a fresh NKey, their JWTs signed as
nats-server verifies them (header `ed25519-nkey`, the issuer's signature over
`header.claims`), a server configuration that trusts the operator and
preloads the account and a system account (`resolver: MEMORY`; JetStream
needs the system account), and the user's `.creds` file, in
the format `nsc` writes and every NATS client reads.

    python3 nats_jwt.py DIR     # writes DIR/operator.conf and DIR/user.creds
"""
import base64
import hashlib
import json
import os
import sys
import time

import nkeys

out = sys.argv[1]
os.makedirs(out, exist_ok=True)


def keypair(prefix):
    return nkeys.from_seed(nkeys.encode_seed(os.urandom(32), prefix))


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwt(issuer, subject, name, nats):
    claims = {"iat": int(time.time()), "iss": issuer.public_key.decode(),
              "name": name, "sub": subject.public_key.decode(), "nats": nats}
    # jti: the claims' hash, as nats-jwt computes it (without the jti itself).
    claims["jti"] = base64.b32encode(
        hashlib.sha256(json.dumps(claims, sort_keys=True).encode()).digest()
    ).decode().rstrip("=")
    head = b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
    body = b64(json.dumps(claims).encode())
    signature = issuer.sign(f"{head}.{body}".encode())
    return f"{head}.{body}.{b64(signature)}"


operator = keypair(nkeys.PREFIX_BYTE_OPERATOR)
system = keypair(nkeys.PREFIX_BYTE_ACCOUNT)  # JetStream needs a system account
account = keypair(nkeys.PREFIX_BYTE_ACCOUNT)
user = keypair(nkeys.PREFIX_BYTE_USER)
unlimited = {"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
             "wildcards": True, "conn": -1, "leaf": -1,
             "mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1}
op_jwt = jwt(operator, operator, "test-operator", {"type": "operator", "version": 2})
sys_jwt = jwt(operator, system, "SYS", {"type": "account", "version": 2})
acc_jwt = jwt(operator, account, "gateway-account",
              {"type": "account", "version": 2, "limits": unlimited})
user_jwt = jwt(account, user, "gateway-user",
               {"type": "user", "version": 2, "pub": {}, "sub": {},
                "subs": -1, "data": -1, "payload": -1})

with open(os.path.join(out, "operator.jwt"), "w") as f:
    f.write(op_jwt)
with open(os.path.join(out, "operator.conf"), "w") as f:
    f.write(f"operator: {json.dumps(os.path.join(out, 'operator.jwt'))}\n"
            f"system_account: {system.public_key.decode()}\n"
            "resolver: MEMORY\n"
            "resolver_preload: {\n"
            f"  {system.public_key.decode()}: {json.dumps(sys_jwt)}\n"
            f"  {account.public_key.decode()}: {json.dumps(acc_jwt)}\n"
            "}\n")
with open(os.path.join(out, "user.creds"), "w") as f:
    f.write("-----BEGIN NATS USER JWT-----\n"
            f"{user_jwt}\n"
            "------END NATS USER JWT------\n\n"
            "************************* IMPORTANT *************************\n"
            "NKEY Seed printed below can be used to sign and prove identity.\n"
            "NKEYs are sensitive and should be treated as secrets.\n\n"
            "-----BEGIN USER NKEY SEED-----\n"
            f"{user.seed.decode()}\n"
            "------END USER NKEY SEED------\n")
os.chmod(os.path.join(out, "user.creds"), 0o600)
print(json.dumps({"account": account.public_key.decode(), "user": user.public_key.decode()}))
