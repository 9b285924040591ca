"""The history store on a real PostgreSQL with a password (scram-sha-256) over TLS with
`sslmode=verify-full`: the password from a file (rotated in place) or an environment
variable, certificates the test makes, errors that name the cause at start (`abgate db
migrate`) and after a rotation, and no password ever shown."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import asyncpg
import pytest
from aiohttp import ClientSession

from abgate.config import Config
from abgate.config.export import config_as_json, mask_url
from abgate.config.model import HistorySettings, SecretRef
from abgate.control.serve import Embedded, embedded
from tests.postgres_server import PostgresServer, postgres_server
from tests.processes import abgate_command, config_document, write_config
from tests.servers import make_config, until
from tests.tls_certs import CertificateAuthority

URL = "/api/agent/credit/decide"
FIRST, SECOND = "first-pg-password-1", "second-pg-password-2"


def verify_full(postgres: PostgresServer, ca: Path) -> str:
    return f"{postgres.bare_url}?sslmode=verify-full&sslrootcert={ca}"


def history_config(agents: dict[str, str], url: str, password: SecretRef) -> Config:
    config = make_config(agents, percentage=50)
    return dataclasses.replace(config, history=HistorySettings(url, password=password))


async def decisions(session: ClientSession, running: Embedded, count: int) -> None:
    for i in range(count):
        async with session.post(
            running.proxy_url + URL, data=b"{}", headers={"X-User-Id": f"user-{i}"}
        ) as response:
            await response.read()
            assert response.status == 200


async def history_reasons(session: ClientSession, running: Embedded) -> list[str]:
    async with session.get(f"{running.control_url}/health/aggregate") as response:
        body = await response.json()
    return list(body["components"]["history_store"]["reasons"])


async def test_verify_full_tls_and_a_scram_password_rotated_in_its_file(
    session: ClientSession, agents: dict[str, str], tmp_path: Path
) -> None:
    ca = CertificateAuthority(tmp_path / "ca")
    secret = tmp_path / "pg-password"
    secret.write_text(FIRST + "\n")
    async with postgres_server(password=FIRST, tls=ca.issue("postgres")) as postgres:
        config = history_config(agents, verify_full(postgres, ca.pem), SecretRef(file=str(secret)))
        async with embedded(config) as running:
            history = running.history
            assert history is not None
            await decisions(session, running, 20)
            await until(lambda: history.written >= 20)
            admin = await asyncpg.connect(postgres.url, ssl=False, timeout=10)
            try:
                encrypted = await admin.fetchval(
                    "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) "
                    "WHERE a.usename = 'abgate' AND s.ssl AND a.pid <> pg_backend_pid()"
                )
                assert encrypted >= 1  # the writer's connection is TLS
                method = await admin.fetchval(
                    "SELECT left(rolpassword, 13) FROM pg_authid WHERE rolname = 'abgate'"
                )
                assert method == "SCRAM-SHA-256"
                # The password is rotated on the server, and sessions are ended.
                await admin.execute(f"ALTER ROLE abgate PASSWORD '{SECOND}'")
                await admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE usename = 'abgate' AND pid <> pg_backend_pid()"
                )
            finally:
                await admin.close()
            await decisions(session, running, 5)  # answers go on; records wait in memory
            await until(lambda: "InvalidPasswordError" in (history.last_error or ""))
            expected = 'InvalidPasswordError: password authentication failed for user "abgate"'
            assert history.last_error == expected
            assert expected in await history_reasons(session, running)
            written = history.written
            secret.write_text(SECOND)  # the file is rotated: the next connection reads it
            await until(lambda: history.written >= written + 5 and history.last_error is None)
            shown = str(config_as_json(config)) + str(await history_reasons(session, running))
    assert FIRST not in shown
    assert SECOND not in shown


def db_config(tmp_path: Path, name: str, url: str) -> Path:
    document = config_document("http://127.0.0.1:9")
    document["history"] = {"postgres_url": url, "password_env": "ABGATE_TEST_PG_PASSWORD"}
    return write_config(tmp_path / f"{name}.yaml", document)


async def db_migrate(config: Path, password: str) -> tuple[int, str]:
    env = {"ABGATE_TEST_PG_PASSWORD": password, "PATH": "/usr/bin:/bin"}
    return await abgate_command("db", "migrate", "--config", str(config), env=env)


@pytest.mark.slow
async def test_a_wrong_password_or_certificate_is_named_at_start(tmp_path: Path) -> None:
    ca = CertificateAuthority(tmp_path / "ca")
    stranger = CertificateAuthority(tmp_path / "stranger", name="someone else's CA")
    async with postgres_server(password=FIRST, tls=ca.issue("postgres")) as postgres:
        config = db_config(tmp_path, "trusting", verify_full(postgres, ca.pem))
        code, output = await db_migrate(config, FIRST)
        assert code == 0, output
        shown = mask_url(verify_full(postgres, ca.pem))  # the user masked too
        assert output.startswith(f"{shown}: schema up to date"), output
        code, output = await db_migrate(config, SECOND)
        assert code == 1
        assert output == (
            "abgate db migrate: InvalidPasswordError: "
            'password authentication failed for user "abgate"\n'
        )
        stranger_config = db_config(tmp_path, "stranger", verify_full(postgres, stranger.pem))
        code, output = await db_migrate(stranger_config, FIRST)
        assert code == 1
        assert output.startswith(
            "abgate db migrate: SSLCertVerificationError: [SSL: CERTIFICATE_VERIFY_FAILED] "
            "certificate verify failed"
        ), output
        code, output = await db_migrate(config, "")
        assert code == 1
        assert output == (
            "abgate db migrate: SecretUnavailable: "
            "environment variable ABGATE_TEST_PG_PASSWORD is not set\n"
        )
    assert FIRST not in output
