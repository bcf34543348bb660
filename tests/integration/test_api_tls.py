"""HTTPS: with api.tls the API speaks TLS 1.3 only and refuses plain HTTP; bad files are
refused at start with what to fix. Certificates are made here with Debian's openssl."""

from __future__ import annotations

import asyncio
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from gridpilot.api.errors import ApiStartError
from gridpilot.api.service import ApiService
from gridpilot.api.tokens import Role
from gridpilot.bus.client import BrokerAddress
from gridpilot.storage import open_storage
from gridpilot.storage.base import Storage
from tests.integration.test_api_support import fill, site_config, unique_site

pytestmark = pytest.mark.integration


def make_certificate(directory: Path, name: str = "server") -> tuple[Path, Path]:
    """A self-signed P-256 certificate for 127.0.0.1 and its key (mode 0600)."""
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    key.chmod(0o600)
    return cert, key


@pytest.fixture
def site_id() -> str:
    return unique_site("tls")


@pytest.fixture
async def storage(site_id: str, tmp_path: Path) -> AsyncIterator[Storage]:
    config = site_config(site_id, tmp_path)
    async with open_storage(config.storage, tmp_path) as store:
        await fill(store, site_id)
        yield store


async def test_serves_tls_1_3_only_and_refuses_plain_http(
    site_id: str, tmp_path: Path, storage: Storage, mosquitto: BrokerAddress
) -> None:
    cert, key = make_certificate(tmp_path)
    config = site_config(
        site_id, tmp_path, port=0, tls={"cert_file": str(cert), "key_file": str(key)}
    )
    async with ApiService(config, mosquitto, storage, base_dir=tmp_path) as api:
        assert api.url.startswith("https://127.0.0.1:")
        token = api.tokens.create(Role.VIEWER, "tls-test", created_by="test")[1]
        verify = ssl.create_default_context(cafile=str(cert))
        async with httpx.AsyncClient(
            base_url=api.url, verify=verify, trust_env=False, timeout=10,
            headers={"Authorization": f"Bearer {token}"},
        ) as https:  # fmt: skip
            response = await https.get("/api/v1/site")
            assert response.status_code == 200
            assert response.json()["id"] == site_id
            stream = response.extensions["network_stream"]
            assert stream.get_extra_info("ssl_object").version() == "TLSv1.3"
            assert response.headers["strict-transport-security"] == "max-age=31536000"

        # A client that stops at TLS 1.2 gets no connection.
        old = ssl.create_default_context(cafile=str(cert))
        old.maximum_version = ssl.TLSVersion.TLSv1_2
        with pytest.raises(httpx.ConnectError):
            async with httpx.AsyncClient(base_url=api.url, verify=old, trust_env=False) as c:
                await c.get("/healthz")

        # Plain HTTP to the TLS port gets no HTTP answer at all.
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError, httpx.ConnectError)):
            async with httpx.AsyncClient(
                base_url=api.url.replace("https://", "http://"), trust_env=False, timeout=5
            ) as plain:
                await plain.get("/healthz")
        reply = await asyncio.to_thread(_raw_http_get, api.port)
        assert not reply.startswith(b"HTTP/1.1 200")


def _raw_http_get(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        try:
            return sock.recv(4096)
        except (ConnectionResetError, TimeoutError):
            return b""


async def test_a_private_key_others_can_read_is_refused(
    site_id: str, tmp_path: Path, storage: Storage, mosquitto: BrokerAddress
) -> None:
    cert, key = make_certificate(tmp_path)
    key.chmod(0o644)
    config = site_config(
        site_id, tmp_path, port=0, tls={"cert_file": str(cert), "key_file": str(key)}
    )
    with pytest.raises(ApiStartError, match=r"others may read the private key.*chmod 600"):
        async with ApiService(config, mosquitto, storage, base_dir=tmp_path):
            pytest.fail("started")


async def test_a_key_that_does_not_match_the_certificate_is_refused(
    site_id: str, tmp_path: Path, storage: Storage, mosquitto: BrokerAddress
) -> None:
    cert, _ = make_certificate(tmp_path, "one")
    _, other_key = make_certificate(tmp_path, "two")
    config = site_config(
        site_id, tmp_path, port=0, tls={"cert_file": str(cert), "key_file": str(other_key)}
    )
    with pytest.raises(ApiStartError, match="cannot be used together"):
        async with ApiService(config, mosquitto, storage, base_dir=tmp_path):
            pytest.fail("started")


async def test_missing_files_are_named(
    site_id: str, tmp_path: Path, storage: Storage, mosquitto: BrokerAddress
) -> None:
    config = site_config(
        site_id, tmp_path, port=0, tls={"cert_file": "nowhere.crt", "key_file": "nowhere.key"}
    )
    with pytest.raises(ApiStartError, match=r"api\.tls\.cert_file .*nowhere\.crt does not exist"):
        async with ApiService(config, mosquitto, storage, base_dir=tmp_path):
            pytest.fail("started")
