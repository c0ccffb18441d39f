"""Tenant token issuers (ADR 0014): a Tenant declares `spec.api.auth` (issuer, audience, and
its keys inline or at a JWKS URL), and the API accepts RS256/ES256 tokens of that issuer for
that tenant only. Keys are made here with `cryptography`; JWK Sets are served by real HTTP(S)
servers started by the tests; every request goes to the real API server over HTTP."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import ipaddress
import json
import ssl
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import pytest_asyncio
import uvicorn
import websockets
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from websockets.typing import Subprotocol

from tests.running import Api
from tollgate_api.jwks import (
    UNKNOWN_KID_BURST,
    UNKNOWN_KID_REFILL_S,
    JwksError,
    KeySet,
    RemoteKeys,
    UnknownKey,
    https_fetcher,
)
from tollgate_core.catalog_service import apply_tenant
from tollgate_core.local.servers import free_port
from tollgate_core.resources.tenant import ApiAuthSpec, ApiSpec, TenantSpec
from tollgate_core.store.db import Pool

AUDIENCE = "tollgate-api"
REGISTER = """mutation Register($input: RegisterCustomerInput!, $key: String!) {
  registerCustomer(input: $input, idempotencyKey: $key) {
    __typename ... on RegisterCustomerSuccess { customer { id name } } } }"""
ME = "{ me { id name } }"
WS_PROTOCOL = Subprotocol("graphql-transport-ws")

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class SigningKey:
    """An issuer's key pair: signs tokens, publishes its public half as a JWK."""

    kid: str
    alg: str
    private: PrivateKey

    @classmethod
    def rsa(cls, kid: str) -> SigningKey:
        return cls(kid, "RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048))

    @classmethod
    def ec(cls, kid: str) -> SigningKey:
        return cls(kid, "ES256", ec.generate_private_key(ec.SECP256R1()))

    def jwk(self) -> dict[str, Any]:
        public = self.private.public_key()
        if isinstance(public, rsa.RSAPublicKey):
            jwk = RSAAlgorithm.to_jwk(public, as_dict=True)
        else:
            jwk = ECAlgorithm.to_jwk(public, as_dict=True)
        return {**jwk, "kid": self.kid, "alg": self.alg, "use": "sig"}

    def sign(self, claims: dict[str, Any], kid: str | None = None) -> str:
        return jwt.encode(claims, self.private, algorithm=self.alg,
                          headers={"kid": kid or self.kid})


def jwks(*keys: SigningKey) -> dict[str, Any]:
    return {"keys": [key.jwk() for key in keys]}


def claims(issuer: str, tenant: str, subject: str = "agent-1",
           roles: tuple[str, ...] = ("agent",), *, audience: str | None = AUDIENCE,
           expires_in: timedelta = timedelta(minutes=5), **extra: Any) -> dict[str, Any]:
    now = datetime.now(UTC)
    body: dict[str, Any] = {"iss": issuer, "sub": subject, "tenant": tenant,
                            "roles": list(roles), "iat": now, "exp": now + expires_in}
    if audience is not None:
        body["aud"] = audience
    body.update(extra)
    return body


async def post(api: Api, token: str, query: str,
               variables: dict[str, Any] | None = None) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.post(api.url, json={"query": query, "variables": variables},
                                 headers={"Authorization": f"Bearer {token}"})


async def register(api: Api, token: str, name: str) -> str:
    response = await post(api, token, REGISTER, {
        "input": {"name": name, "email": f"{uuid.uuid4().hex[:8]}@example.de"},
        "key": uuid.uuid4().hex})
    assert response.status_code == 200, response.text
    result = response.json()["data"]["registerCustomer"]
    assert result["__typename"] == "RegisterCustomerSuccess", result
    customer_id: str = result["customer"]["id"]
    return customer_id


def refusal(response: httpx.Response) -> str:
    """The message of a 401 (which claim failed)."""
    assert response.status_code == 401, response.text
    error = response.json()["errors"][0]
    assert error["extensions"]["code"] == "UNAUTHENTICATED"
    assert "data" not in response.json()
    message: str = error["message"]
    return message


async def create_tenant(pool: Pool, tenant: str, auth: ApiAuthSpec | None) -> None:
    await apply_tenant(pool, tenant, TenantSpec(market="DE", currency="EUR",
                                                api=ApiSpec(auth=auth)))


# --------------------------------------------------------------------------- servers


@dataclass
class JwksServer:
    """A JWK Set over real HTTP(S); the test changes what it answers as it goes."""

    document: dict[str, Any]
    status: int = 200
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=lambda: {"Cache-Control": "max-age=3600"})
    stream: bool = False
    """Send the body in chunks without Content-Length."""
    requests: int = 0
    url: str = ""

    async def handle(self, request: Request) -> Response:
        self.requests += 1
        body = self.body if self.body is not None else json.dumps(self.document).encode()
        if self.stream:
            async def chunks() -> AsyncIterator[bytes]:
                for start in range(0, len(body), 1024):
                    yield body[start:start + 1024]
            return StreamingResponse(chunks(), self.status, headers=self.headers,
                                     media_type="application/jwk-set+json")
        return Response(body, self.status, headers=self.headers,
                        media_type="application/jwk-set+json")


@contextlib.asynccontextmanager
async def serve_jwks(document: dict[str, Any], tls: tuple[Path, Path] | None = None
                     ) -> AsyncIterator[JwksServer]:
    """A JWKS server on a free loopback port; `tls`: (certificate, key) files to serve
    https with."""
    server_state = JwksServer(document)
    port = free_port()
    scheme = "https" if tls else "http"
    server_state.url = f"{scheme}://127.0.0.1:{port}/jwks.json"
    app = Starlette(routes=[Route("/jwks.json", server_state.handle)])
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                            lifespan="off",
                            ssl_certfile=str(tls[0]) if tls else None,
                            ssl_keyfile=str(tls[1]) if tls else None)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        assert not task.done(), "JWKS server failed to start"
        await asyncio.sleep(0.02)
    try:
        yield server_state
    finally:
        server.should_exit = True
        await task


# --------------------------------------------------------------------------- fixtures


@dataclass(frozen=True)
class Keys:
    rsa: SigningKey
    ec: SigningKey
    stranger: SigningKey
    """Not the tenant's: signs with the tenant's kid to forge."""


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys(SigningKey.rsa("rsa-1"), SigningKey.ec("ec-1"), SigningKey.rsa("rsa-1"))


@dataclass(frozen=True)
class InlineTenant:
    name: str
    issuer: str
    neighbour: str
    """Another tenant, with an issuer of its own."""
    neighbour_issuer: str


@pytest_asyncio.fixture
async def inline_tenant(pool: Pool, keys: Keys, tenant_name: str) -> InlineTenant:
    issuer = f"https://login.{tenant_name}.example/realms/de"
    await create_tenant(pool, tenant_name, ApiAuthSpec(
        issuer=issuer, audience=AUDIENCE, jwks=json.dumps(jwks(keys.rsa, keys.ec))))
    neighbour, neighbour_issuer = tenant_name + "n", f"https://login.{tenant_name}n.example"
    await create_tenant(pool, neighbour, ApiAuthSpec(
        issuer=neighbour_issuer, jwks=json.dumps(jwks(keys.stranger))))
    return InlineTenant(tenant_name, issuer, neighbour, neighbour_issuer)


# --------------------------------------------------------------------------- inline JWKS


async def test_a_tenant_accepts_rs256_and_es256_tokens_of_its_issuer(
        api: Api, keys: Keys, inline_tenant: InlineTenant) -> None:
    t = inline_tenant
    agent = keys.rsa.sign(claims(t.issuer, t.name, "agent-7", ("agent",)))
    customer_id = await register(api, agent, "Erika Issuer")

    # The customer's own ES256 token: subject and tenant come from it, RLS does the rest.
    mine = keys.ec.sign(claims(t.issuer, t.name, customer_id, ("customer",)))
    me = (await post(api, mine, ME)).json()
    assert me == {"data": {"me": {"id": customer_id, "name": "Erika Issuer"}}}

    # Within the leeway: expired 10 s ago is still accepted (clock skew), 5 min ago is not.
    skewed = keys.ec.sign(claims(t.issuer, t.name, customer_id, ("customer",),
                                 expires_in=timedelta(seconds=-10)))
    assert (await post(api, skewed, ME)).json()["data"]["me"]["id"] == customer_id

    # The same customer id under the local HS256 issuer of another tenant sees nothing.
    elsewhere = api.token(t.neighbour, customer_id, ("customer",))
    assert (await post(api, elsewhere, ME)).json()["data"] is None


def _unsigned(body: dict[str, Any]) -> str:
    def part(value: dict[str, Any]) -> str:
        raw = json.dumps(value, default=lambda d: int(d.timestamp())).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(body)}."


def _hs256_with_public_key(keys: Keys, body: dict[str, Any]) -> str:
    """Algorithm confusion: HS256 keyed with the RSA public key's PEM."""
    pem = keys.rsa.private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    header = {"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}
    signing_input = ".".join(
        base64.urlsafe_b64encode(json.dumps(v, default=lambda d: int(d.timestamp())).encode())
        .rstrip(b"=").decode() for v in (header, body))
    signature = hmac.new(pem, signing_input.encode(), "sha256").digest()
    return signing_input + "." + base64.urlsafe_b64encode(signature).rstrip(b"=").decode()


# (case, token for the inline tenant, what the 401's message must say)
REFUSALS: list[tuple[str, Any, str]] = [
    ("signed by another key with the tenant's kid",
     lambda k, t: k.stranger.sign(claims(t.issuer, t.name)),
     "signature does not verify"),
    ("signed by a key the tenant does not publish",
     lambda k, t: k.stranger.sign(claims(t.issuer, t.name), kid="rsa-9"),
     "no key with kid 'rsa-9'"),
    ("expired beyond the leeway",
     lambda k, t: k.rsa.sign(claims(t.issuer, t.name, expires_in=timedelta(minutes=-5))),
     "expired (exp)"),
    ("not valid yet",
     lambda k, t: k.rsa.sign(claims(t.issuer, t.name,
                                    nbf=datetime.now(UTC) + timedelta(minutes=5))),
     "not valid yet (nbf)"),
    ("for another audience",
     lambda k, t: k.rsa.sign(claims(t.issuer, t.name, audience="someone-else")),
     "audience (aud) does not name 'tollgate-api'"),
    ("without an audience",
     lambda k, t: k.rsa.sign(claims(t.issuer, t.name, audience=None)),
     "no 'aud' claim"),
    ("without an expiry",
     lambda k, t: k.rsa.sign({key: value for key, value in claims(t.issuer, t.name).items()
                              if key != "exp"}),
     "no 'exp' claim"),
    ("alg none",
     lambda k, t: _unsigned(claims(t.issuer, t.name)),
     "(alg) 'none' is not accepted"),
    ("HS256 keyed with the public key",
     lambda k, t: _hs256_with_public_key(k, claims(t.issuer, t.name)),
     "HS256 is accepted only from the platform's own issuer"),
    ("an RSA kid on an ES256 token",
     lambda k, t: k.ec.sign(claims(t.issuer, t.name), kid="rsa-1"),
     "key 'rsa-1' is an RS256 key but the token's alg is ES256"),
    ("claiming another tenant",
     lambda k, t: k.rsa.sign(claims(t.issuer, t.neighbour)),
     "does not accept tokens of issuer (iss)"),
    ("claiming a tenant that does not exist",
     lambda k, t: k.rsa.sign(claims(t.issuer, t.name + "zz")),
     "does not accept tokens of issuer (iss)"),
    ("from another issuer",
     lambda k, t: k.rsa.sign(claims("https://evil.example", t.name)),
     "does not accept tokens of issuer (iss) 'https://evil.example'"),
    ("the neighbour's issuer, forged with this tenant's key",
     lambda k, t: k.ec.sign(claims(t.neighbour_issuer, t.neighbour)),
     "no key with kid 'ec-1'"),
    ("without a tenant",
     lambda k, t: k.rsa.sign({key: value for key, value in claims(t.issuer, t.name).items()
                              if key != "tenant"}),
     "no 'tenant' claim"),
]


@pytest.mark.parametrize(("case", "make", "reason"), REFUSALS, ids=[c for c, _, _ in REFUSALS])
async def test_a_token_the_tenant_did_not_issue_is_refused_naming_what_failed(
        api: Api, keys: Keys, inline_tenant: InlineTenant, case: str, make: Any,
        reason: str) -> None:
    token: str = make(keys, inline_tenant)
    message = refusal(await post(api, token, "{ __typename }"))
    assert reason in message, message


async def test_the_neighbours_own_tokens_still_work(
        api: Api, keys: Keys, inline_tenant: InlineTenant) -> None:
    """The refusals above are about the claims, not a broken neighbour."""
    t = inline_tenant
    token = keys.stranger.sign(claims(t.neighbour_issuer, t.neighbour, audience=None))
    customer_id = await register(api, token, "Max Nachbar")
    assert uuid.UUID(customer_id)


async def test_a_websocket_is_authenticated_by_the_tenants_issuer_too(
        api: Api, keys: Keys, inline_tenant: InlineTenant) -> None:
    url = api.url.replace("http://", "ws://")
    t = inline_tenant
    good = keys.ec.sign(claims(t.issuer, t.name))
    async with websockets.connect(url, subprotocols=[WS_PROTOCOL]) as ws:
        await ws.send(json.dumps({"type": "connection_init",
                                  "payload": {"Authorization": f"Bearer {good}"}}))
        assert json.loads(await ws.recv())["type"] == "connection_ack"

    forged = keys.stranger.sign(claims(t.issuer, t.name))
    async with websockets.connect(url, subprotocols=[WS_PROTOCOL]) as ws:
        await ws.send(json.dumps({"type": "connection_init",
                                  "payload": {"Authorization": f"Bearer {forged}"}}))
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 4403


# --------------------------------------------------------------------------- jwksUri


async def test_keys_at_a_jwks_uri_are_cached_and_a_rotated_key_is_picked_up(
        api: Api, pool: Pool, tenant_name: str) -> None:
    old, new = SigningKey.rsa("2026-01"), SigningKey.ec("2026-07")
    issuer = f"https://idp.{tenant_name}.example"
    async with serve_jwks(jwks(old)) as idp:
        await create_tenant(pool, tenant_name, ApiAuthSpec(issuer=issuer, jwks_uri=idp.url))
        # The platform's own HS256 tokens keep working beside the tenant's issuer.
        customer_id = await register(api, api.token(tenant_name, "admin", ("admin",)), "Rita")
        as_customer = claims(issuer, tenant_name, customer_id, ("customer",), audience=None)

        assert idp.requests == 0  # fetched when first needed
        me = (await post(api, old.sign(as_customer), ME)).json()
        assert me["data"]["me"]["id"] == customer_id
        assert idp.requests == 1
        for _ in range(3):  # cached for the response's max-age (an hour)
            assert (await post(api, old.sign(as_customer), ME)).status_code == 200
        assert idp.requests == 1

        # Rotation: the issuer publishes a new key and retires the old one. The first token
        # with the new kid makes the API fetch the set again, no restart.
        idp.document = jwks(new)
        me = (await post(api, new.sign(as_customer), ME)).json()
        assert me["data"]["me"] == {"id": customer_id, "name": "Rita"}
        assert idp.requests == 2
        assert (await post(api, new.sign(as_customer), ME)).status_code == 200
        assert idp.requests == 2

        # The retired key is gone from the set, so its tokens are refused now.
        message = refusal(await post(api, old.sign(as_customer), ME))
        assert "no key with kid '2026-01'" in message, message


async def test_an_unreachable_jwks_uri_refuses_with_the_reason(
        api: Api, pool: Pool, tenant_name: str) -> None:
    key = SigningKey.ec("k")
    issuer = f"https://idp.{tenant_name}.example"
    async with serve_jwks(jwks(key)) as idp:
        idp.status, idp.body = 503, b"maintenance"
        await create_tenant(pool, tenant_name, ApiAuthSpec(issuer=issuer, jwks_uri=idp.url))
        message = refusal(await post(api, key.sign(claims(issuer, tenant_name)), ME))
    assert "answered HTTP 503" in message, message


# --------------------------------------------------------------------------- fetching


async def test_the_fetcher_refuses_oversized_redirected_and_broken_sets() -> None:
    fetch = https_fetcher(max_bytes=4096)
    key = SigningKey.rsa("k")
    async with serve_jwks(jwks(key)) as idp:
        fetched = await fetch(idp.url)
        assert KeySet.parse(fetched.body).find("k", "RS256").key_id == "k"
        assert fetched.max_age_s == 3600

        idp.body = b'{"keys": [' + b" " * 5000 + b"]}"
        with pytest.raises(JwksError, match=r"sent 5012 bytes \(at most 4096\)"):
            await fetch(idp.url)  # announced by Content-Length
        idp.stream = True
        with pytest.raises(JwksError, match="sent more than 4096 bytes"):
            await fetch(idp.url)  # counted while reading
        idp.stream = False

        idp.body, idp.status = b"", 302
        idp.headers = {"Location": "https://elsewhere.example/jwks.json"}
        with pytest.raises(JwksError, match="answered HTTP 302"):
            await fetch(idp.url)

        idp.body, idp.status, idp.headers = b"<html>", 200, {}
        fetched = await fetch(idp.url)
        assert fetched.max_age_s == 300  # no Cache-Control: five minutes
        with pytest.raises(JwksError, match="not JSON"):
            KeySet.parse(fetched.body)

    with pytest.raises(JwksError, match="not an https URL"):
        await fetch("http://idp.example/jwks.json")


def _certificate_authority(folder: Path) -> tuple[Path, tuple[Path, Path]]:
    """A CA and a certificate for 127.0.0.1 it signed: (CA file, (cert file, key file))."""
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tollgate test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                       crl_sign=True, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False,
                                       decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                         critical=False)
          .sign(ca_key, hashes.SHA256()))
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(leaf_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    ca_file, cert_file, key_file = folder / "ca.pem", folder / "tls.crt", folder / "tls.key"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(leaf_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return ca_file, (cert_file, key_file)


async def test_https_is_verified_against_the_trusted_authorities(tmp_path: Path) -> None:
    ca_file, tls = _certificate_authority(tmp_path)
    key = SigningKey.ec("k")
    async with serve_jwks(jwks(key), tls=tls) as idp:
        assert idp.url.startswith("https://")
        trusted = https_fetcher(tls=ssl.create_default_context(cafile=str(ca_file)))
        fetched = await trusted(idp.url)
        assert KeySet.parse(fetched.body).find("k", "ES256").key_id == "k"
        with pytest.raises(JwksError, match=r"fetching .* failed"):
            await https_fetcher()(idp.url)  # the system's authorities do not know this CA
    assert idp.requests == 1


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_unknown_kids_fetch_again_within_a_budget_and_outages_use_the_last_keys(
        ) -> None:
    clock = Clock()
    key = SigningKey.rsa("k1")
    async with serve_jwks(jwks(key)) as idp:
        remote = RemoteKeys(idp.url, https_fetcher(), clock)
        assert (await remote.key("k1", "RS256")).key_id == "k1"
        assert idp.requests == 1

        # Each unknown kid looks again, up to the burst; then no more until time passes.
        for n in range(UNKNOWN_KID_BURST):
            with pytest.raises(UnknownKey, match=f"no key with kid 'x{n}'"):
                await remote.key(f"x{n}", "RS256")
        assert idp.requests == 1 + UNKNOWN_KID_BURST
        with pytest.raises(UnknownKey, match="fetched again too often"):
            await remote.key("x-more", "RS256")
        assert idp.requests == 1 + UNKNOWN_KID_BURST
        clock.now += UNKNOWN_KID_REFILL_S
        rotated = SigningKey.ec("k2")
        idp.document = jwks(key, rotated)
        assert (await remote.key("k2", "ES256")).key_id == "k2"
        assert idp.requests == 2 + UNKNOWN_KID_BURST

        # The issuer fails: past the max-age the last keys stay in use, for a day.
        idp.status, idp.body = 500, b"down"
        clock.now += 3601
        assert (await remote.key("k1", "RS256")).key_id == "k1"
        assert idp.requests == 3 + UNKNOWN_KID_BURST
        clock.now += 86_400
        with pytest.raises(JwksError, match="answered HTTP 500"):
            await remote.key("k1", "RS256")


def test_only_rs256_and_es256_signature_keys_are_loaded() -> None:
    good = SigningKey.rsa("good").jwk()
    weak = {**RSAAlgorithm.to_jwk(rsa.generate_private_key(public_exponent=65537,
                                                          key_size=1024).public_key(),  # noqa: S505
                                  as_dict=True), "kid": "weak"}
    p384 = {**ECAlgorithm.to_jwk(ec.generate_private_key(ec.SECP384R1()).public_key(),
                                 as_dict=True), "kid": "p384"}
    document = {"keys": [
        good,
        {"kty": "oct", "kid": "hmac", "alg": "HS256"},
        {**good, "kid": "enc", "use": "enc"},
        {**good, "kid": "ps", "alg": "PS256"},
        weak, p384,
        {**SigningKey.rsa("private").jwk(), "d": "AQAB"},
        {**good},  # kid "good" twice
    ]}
    loaded = KeySet.parse(json.dumps(document))
    assert [k.key_id for k in loaded.keys] == ["good"]
    reasons = " | ".join(loaded.skipped)
    for expected in ("kty 'oct'", "use 'enc'", "alg 'PS256'", "1024 bits", "crv 'P-384'",
                     "private or symmetric", "appears twice"):
        assert expected in reasons, reasons
    with pytest.raises(JwksError, match="no usable RS256/ES256 key"):
        KeySet.parse(json.dumps({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}))


# --------------------------------------------------------------------------- the spec


def test_the_spec_needs_exactly_one_key_source_and_public_keys_only() -> None:
    jwk = json.dumps(jwks(SigningKey.ec("k")))
    assert ApiAuthSpec(issuer="i", jwks=jwk).jwks == jwk
    assert ApiAuthSpec.model_validate(
        {"issuer": "i", "jwksUri": "https://login.example.com/certs"}).jwks_uri
    for ok in ("http://127.0.0.1:8080/jwks.json", "http://localhost/jwks", "http://[::1]:1/k"):
        assert ApiAuthSpec(issuer="i", jwks_uri=ok).jwks_uri == ok

    refused: list[tuple[dict[str, Any], str]] = [
        ({"issuer": "i"}, "exactly one of api.auth.jwks and api.auth.jwksUri"),
        ({"issuer": "i", "jwks": jwk, "jwksUri": "https://x.example/k"}, "exactly one of"),
        ({"issuer": "i", "jwksUri": "http://idp.example/jwks"}, "should match pattern"),
        ({"issuer": "i", "jwksUri": "http://127.0.0.1.evil.example/k"}, "should match pattern"),
        ({"issuer": "i", "jwks": "{not json"}, "api.auth.jwks is not JSON"),
        ({"issuer": "i", "jwks": '{"keys": []}'}, "at least one key"),
        ({"issuer": "i", "jwks": '{"keys": [{"kid": "k"}]}'}, "keys[0] is not a JWK"),
        ({"issuer": "i", "jwks": json.dumps({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]})},
         "private or symmetric key material (k)"),
        ({"issuer": "", "jwksUri": "https://x.example/k"}, "at least 1 character"),
    ]
    for document, message in refused:
        with pytest.raises(ValidationError) as caught:
            ApiAuthSpec.model_validate(document)
        assert message in str(caught.value), (document, str(caught.value))


def test_stored_specs_with_the_old_auth_issuer_field_still_load() -> None:
    assert ApiSpec.model_validate({"replicas": 2, "authIssuer": None}).auth is None
    with pytest.raises(ValidationError, match=r"api\.authIssuer was replaced by api\.auth"):
        ApiSpec.model_validate({"authIssuer": "https://login.example.com"})
