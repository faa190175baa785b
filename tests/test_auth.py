"""Auth as the platform deploys it: RS256/RS512 JWTs from a JWKS, two cookies, one role."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from helpers import (
    USER,
    KeyServer,
    access_claims,
    cookies_for,
    info_claims,
    new_key,
    public_jwk,
    run_job_service,
    token,
    write_config,
)

from job_service import INITIAL_MAINTENANCE_MSG, ConfigError, load_config


@pytest.fixture
def backend() -> str:
    return "tinydb"


NEW_JOB = {"jobs": [{"operation": "ADD", "target": "MY_DATASET"}]}


async def test_an_administrator_creates_jobs_as_themselves(auth_client, key_server):
    keys, _ = key_server
    client = await auth_client()
    response = await client.post("/jobs", json=NEW_JOB, cookies=cookies_for(keys))
    assert response.status == 200
    [result] = await response.json()
    job = await (await client.get(f"/jobs/{result['job_id']}", cookies=cookies_for(keys))).json()
    assert job["createdBy"] == {"userId": USER, "firstName": "Ola", "lastName": "Nordmann"}


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])  # the scheme's case is free
async def test_the_authorization_token_may_come_as_a_bearer_header(auth_client, key_server, scheme):
    keys, _ = key_server
    client = await auth_client()
    cookies = cookies_for(keys)
    response = await client.post(
        "/jobs",
        json=NEW_JOB,
        headers={"Authorization": f"{scheme} {cookies['authorization']}"},
        cookies={"user-info": cookies["user-info"]},
    )
    assert response.status == 200


def hs256_with_public_key(keys: KeyServer, claims: dict) -> str:
    """The classic confusion attack: HMAC "signed" with the public key as the secret."""
    public_pem = (
        keys.keys["key-1"]
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )

    def b64(data: bytes) -> bytes:
        return base64.urlsafe_b64encode(data).rstrip(b"=")

    signing_input = b64(json.dumps({"alg": "HS256", "kid": "key-1"}).encode()) + b"." + b64(json.dumps(claims).encode())
    return (signing_input + b"." + b64(hmac.new(public_pem, signing_input, hashlib.sha256).digest())).decode()


def unsigned(claims: dict) -> str:
    return jwt.encode(claims, None, algorithm="none", headers={"kid": "key-1"})


BAD_AUTHORIZATION = {
    "malformed": lambda keys: "not.a.token",
    "expired": lambda keys: token(keys.keys["key-1"], **access_claims(exp=int(time.time()) - 60)),
    "not yet valid": lambda keys: token(keys.keys["key-1"], **access_claims(nbf=int(time.time()) + 600)),
    "wrongly signed": lambda keys: token(new_key(), **access_claims()),
    "wrong audience": lambda keys: token(keys.keys["key-1"], **access_claims(aud="another-service")),
    "algorithm not allowed": lambda keys: token(keys.keys["key-1"], algorithm="RS384", **access_claims()),
    "alg none": lambda keys: unsigned(access_claims()),
    "HS256 with the public key": lambda keys: hs256_with_public_key(keys, access_claims()),
    "no sub": lambda keys: token(keys.keys["key-1"], **access_claims(sub=None)),
    "no role": lambda keys: token(keys.keys["key-1"], **access_claims(**{"accreditation/role": None})),
    "no user uuid": lambda keys: token(keys.keys["key-1"], **access_claims(**{"user/uuid": None})),
    "no expiry": lambda keys: token(keys.keys["key-1"], **access_claims(exp=None)),
    "another user": lambda keys: token(keys.keys["key-1"], **access_claims(**{"user/uuid": "someone-else"})),
    "no key id": lambda keys: jwt.encode(access_claims(), keys.keys["key-1"], algorithm="RS256"),
}


@pytest.mark.parametrize("case", list(BAD_AUTHORIZATION))
async def test_a_bad_authorization_token_is_a_401_and_creates_nothing(auth_client, key_server, case):
    keys, _ = key_server
    client = await auth_client()
    cookies = cookies_for(keys)
    cookies["authorization"] = BAD_AUTHORIZATION[case](keys)
    response = await client.post("/jobs", json=NEW_JOB, cookies=cookies)
    assert response.status == 401, await response.text()
    assert "message" in await response.json()
    assert await (await client.get("/jobs", cookies=cookies_for(keys))).json() == []


@pytest.mark.parametrize(
    "info",
    [
        info_claims(**{"user/firstName": None}),
        info_claims(**{"user/lastName": None}),
        info_claims(**{"user/uuid": None}),
        info_claims(**{"user/uuid": "someone-else"}),
        info_claims(**{"user/firstName": 42}),
        info_claims(exp=int(time.time()) - 60),
    ],
)
async def test_a_bad_user_info_token_is_a_401(auth_client, key_server, info):
    keys, _ = key_server
    client = await auth_client()
    response = await client.post("/jobs", json=NEW_JOB, cookies=cookies_for(keys, info=info))
    assert response.status == 401


@pytest.mark.parametrize("missing", ["authorization", "user-info"])
async def test_a_missing_token_is_a_401(auth_client, key_server, missing):
    keys, _ = key_server
    client = await auth_client()
    cookies = cookies_for(keys)
    del cookies[missing]
    response = await client.post("/jobs", json=NEW_JOB, cookies=cookies)
    assert response.status == 401
    assert await response.json() == {"message": f"The {missing} token is missing"}


async def test_another_role_is_a_403(auth_client, key_server):
    keys, _ = key_server
    client = await auth_client()
    access = access_claims(**{"accreditation/role": "role/reader"})
    response = await client.post("/jobs", json=NEW_JOB, cookies=cookies_for(keys, access=access))
    assert response.status == 403
    assert await response.json() == {"message": "Only a data administrator may do this"}


async def test_another_role_may_not_delete_archives_or_set_the_maintenance_flag(auth_client, key_server, input_dir):
    keys, _ = key_server
    client = await auth_client()
    (input_dir / "MY_DATASET.tar").write_bytes(b"")
    cookies = cookies_for(keys, access=access_claims(**{"accreditation/role": "role/reader"}))
    assert (await client.delete("/importable-datasets/MY_DATASET", cookies=cookies)).status == 403
    response = await client.post("/maintenance-status", json={"msg": "x", "paused": True}, cookies=cookies)
    assert response.status == 403
    assert (input_dir / "MY_DATASET.tar").exists()
    assert len(await (await client.get("/maintenance-history")).json()) == 1  # the initial status alone


async def test_an_anonymous_caller_learns_nothing_about_the_body_schema(auth_client):
    client = await auth_client()
    for path, body in [("/jobs", {"nonsense": True}), ("/maintenance-status", {"nonsense": True})]:
        response = await client.post(path, json=body)
        assert response.status == 401
        assert "nonsense" not in (await response.json())["message"]


async def test_every_writing_route_of_the_admin_ui_needs_an_administrator(auth_client, key_server, input_dir):
    keys, _ = key_server
    client = await auth_client()
    (input_dir / "MY_DATASET.tar").write_bytes(b"")
    assert (await client.delete("/importable-datasets/MY_DATASET")).status == 401
    assert (await client.post("/maintenance-status", json={"msg": "x", "paused": True})).status == 401
    assert (input_dir / "MY_DATASET.tar").exists()
    history = await (await client.get("/maintenance-history")).json()
    assert [status["msg"] for status in history] == [INITIAL_MAINTENANCE_MSG]  # only the one stored at start

    cookies = cookies_for(keys)
    assert (await client.delete("/importable-datasets/MY_DATASET", cookies=cookies)).status == 200
    assert (await client.post("/maintenance-status", json={"msg": "x", "paused": True}, cookies=cookies)).status == 200


async def test_reading_needs_no_token(auth_client):
    client = await auth_client()
    for path in ("/targets", "/importable-datasets", "/maintenance-status", "/maintenance-history"):
        assert (await client.get(path)).status == 200, path


async def test_reading_jobs_needs_a_token_unless_configured_open(auth_client, key_server):
    keys, _ = key_server
    closed = await auth_client()
    assert (await closed.get("/jobs")).status == 401
    assert (await closed.get("/jobs", cookies=cookies_for(keys))).status == 200
    await closed.close()  # the next service takes over its data directory
    opened = await auth_client(open_job_reads=True)
    assert (await opened.get("/jobs")).status == 200


async def test_a_rotated_key_is_picked_up_while_the_service_runs(auth_client, key_server):
    keys, _ = key_server
    client = await auth_client(jwks_refetch_seconds=0.1)
    assert (await client.post("/jobs", json=NEW_JOB, cookies=cookies_for(keys))).status == 200

    keys.keys["key-2"] = new_key()
    await asyncio.sleep(0.15)
    cookies = {
        "authorization": token(keys.keys["key-2"], kid="key-2", **access_claims()),
        "user-info": token(keys.keys["key-2"], kid="key-2", **info_claims()),
    }
    body = {"jobs": [{"operation": "ADD", "target": "OTHER_DATASET"}]}
    response = await client.post("/jobs", json=body, cookies=cookies)
    assert response.status == 200
    assert (await response.json())[0]["msg"] == "CREATED"


async def test_made_up_key_ids_do_not_hammer_the_key_server(auth_client, key_server):
    keys, _ = key_server
    client = await auth_client(jwks_refetch_seconds=60)
    assert (await client.post("/jobs", json=NEW_JOB, cookies=cookies_for(keys))).status == 200
    for n in range(20):
        cookies = cookies_for(keys)
        cookies["authorization"] = token(keys.keys["key-1"], kid=f"made-up-{n}", **access_claims())
        assert (await client.post("/jobs", json=NEW_JOB, cookies=cookies)).status == 401
    assert keys.fetches == 1


async def test_an_unreachable_key_server_with_no_key_cached_is_a_503(make_client, key_server, unused_tcp_port):
    keys, _ = key_server
    client = await make_client(auth={"enabled": True, "jwks_url": f"http://127.0.0.1:{unused_tcp_port}/jwks"})
    response = await client.post("/jobs", json=NEW_JOB, cookies=cookies_for(keys))
    assert response.status == 503
    assert await response.json() == {"message": "The key server cannot be reached to verify the token"}


async def test_the_keys_may_come_from_a_file(make_client, key_server, tmp_path):
    keys, _ = key_server
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [public_jwk("key-1", keys.keys["key-1"])]}))
    client = await make_client(auth={"enabled": True, "jwks_file": str(jwks)})
    assert (await client.post("/jobs", json=NEW_JOB, cookies=cookies_for(keys))).status == 200


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"Authorization": "Bearer wrong-token-of-the-executor"}, 401),
        ({"Authorization": "Bearer the-executors-own-token"}, 200),
    ],
)
async def test_a_service_token_guards_job_updates(make_client, headers, status):
    client = await make_client(auth={"service_token": "the-executors-own-token"})
    [result] = await (await client.post("/jobs", json=NEW_JOB)).json()
    response = await client.put(f"/jobs/{result['job_id']}", json={"status": "built"}, headers=headers)
    assert response.status == status
    job = await (await client.get(f"/jobs/{result['job_id']}")).json()
    assert job["status"] == ("built" if status == 200 else "queued")


async def test_without_a_service_token_updates_stay_open(client):
    [result] = await (await client.post("/jobs", json=NEW_JOB)).json()
    assert (await client.put(f"/jobs/{result['job_id']}", json={"status": "built"})).status == 200


async def test_a_user_info_token_without_expiry_is_a_401(auth_client, key_server):
    keys, _ = key_server
    client = await auth_client()
    response = await client.post("/jobs", json=NEW_JOB, cookies=cookies_for(keys, info=info_claims(exp=None)))
    assert response.status == 401
    assert "exp" in (await response.json())["message"]


async def test_a_revoked_key_stops_working_at_the_next_scheduled_refresh(auth_client, key_server):
    keys, _ = key_server
    client = await auth_client(jwks_refresh_seconds=0.1)
    assert (await client.post("/jobs", json=NEW_JOB, cookies=cookies_for(keys))).status == 200
    revoked = keys.keys.pop("key-1")
    keys.keys["key-2"] = new_key()
    await asyncio.sleep(0.3)
    cookies = {"authorization": token(revoked, **access_claims()), "user-info": token(revoked, **info_claims())}
    second = {"jobs": [{"operation": "ADD", "target": "OTHER_DATASET"}]}
    response = await client.post("/jobs", json=second, cookies=cookies)
    assert response.status == 401
    assert await response.json() == {"message": "The token is signed with an unknown key"}


async def test_while_the_key_server_is_down_the_last_good_keys_stay(auth_client, key_server):
    keys, _ = key_server
    client = await auth_client(jwks_refresh_seconds=0.1)
    assert (await client.post("/jobs", json=NEW_JOB, cookies=cookies_for(keys))).status == 200
    keys.down = True
    await asyncio.sleep(0.3)
    second = {"jobs": [{"operation": "ADD", "target": "OTHER_DATASET"}]}
    assert (await client.post("/jobs", json=second, cookies=cookies_for(keys))).status == 200


def jwks_file(tmp_path) -> str:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": []}))
    return str(path)


def test_with_auth_on_the_service_does_not_start_without_the_executors_key(tmp_path):
    config = write_config(tmp_path / "config.toml", {"auth": {"enabled": True, "jwks_file": jwks_file(tmp_path)}})
    with pytest.raises(ConfigError, match=r"JOB_SERVICE_API_KEY.*open_executor_routes"):
        load_config(config, environ={})
    # Another program's API_KEY in the environment is not the executor's key.
    with pytest.raises(ConfigError, match="open_executor_routes"):
        load_config(config, environ={"API_KEY": "somebody else's key, long enough"})
    assert load_config(config, environ={"JOB_SERVICE_API_KEY": "the executor's key, long enough"}).auth.api_key


def test_the_executors_routes_stay_open_with_auth_on_only_when_the_operator_says_so(tmp_path):
    auth = {"enabled": True, "jwks_file": jwks_file(tmp_path), "open_executor_routes": True}
    config = load_config(write_config(tmp_path / "config.toml", {"auth": auth}), environ={})
    assert config.auth.api_key is None and config.auth.open_executor_routes


def test_the_command_names_the_setting_in_one_line(tmp_path):
    config = write_config(tmp_path / "config.toml", {"auth": {"enabled": True, "jwks_file": jwks_file(tmp_path)}})
    finished = run_job_service(config)
    assert finished.returncode == 1
    [line] = finished.stderr.strip().splitlines()
    assert "open_executor_routes" in line


async def raw_request(client, head: bytes) -> bytes:
    """A request as bytes on a connection of its own: headers no HTTP client would send."""
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    writer.write(head)
    await writer.drain()
    answer = await reader.read(65536)
    writer.close()
    return answer


@pytest.mark.parametrize(
    "header",
    [
        b"X-API-Key: caf\xe9-not-utf-8\r\n",
        b"Authorization: Bearer caf\xe9.not.utf8\r\n",
        b"Cookie: authorization=caf\xe9; user-info=caf\xe9\r\n",
    ],
)
async def test_a_credential_that_is_not_utf8_is_a_401(auth_client, header):
    client = await auth_client(api_key="the executor's key, long enough")
    for request_line in (b"GET /jobs HTTP/1.1\r\n", b"GET /datastores/local/targets HTTP/1.1\r\n"):
        answer = await raw_request(client, request_line + b"Host: x\r\nConnection: close\r\n" + header + b"\r\n")
        assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
