"""Mosquitto started from GridPilot's production configuration (``gridpilot.ops.mosquitto``,
the same renderer that wrote ``deploy/mosquitto/gridpilot.conf``), with only its file paths
and ports moved into a test directory: a loopback password listener and a TLS 1.3 listener
that requires client certificates from a CA the test makes itself."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from gridpilot.config.models import GridPilotConfig
from gridpilot.ops.certs import issue_site_certificates
from gridpilot.ops.mosquitto import BrokerLayout, render_acl, render_broker_config
from tests.conftest import MOSQUITTO, find_free_port

_START_TIMEOUT_S = 10.0


class ProductionBroker:
    """``start()`` issues the certificates (CA, ``server`` for 127.0.0.1/localhost, one per
    client id), writes the password file (``users``), the site's ACL (unless ``acl`` is
    False: the broker then lets every logged-in client publish anywhere) and the config."""

    def __init__(
        self,
        workdir: Path,
        *,
        site: GridPilotConfig | None = None,
        clients: Sequence[str] = (),
        users: dict[str, str] | None = None,
        acl: bool = True,
    ) -> None:
        if not MOSQUITTO.exists():
            pytest.fail(f"mosquitto not found at {MOSQUITTO}: apt-get install mosquitto")
        self.workdir = workdir
        self.pki = workdir / "pki"
        self.site = site
        self.clients = list(clients)
        self.users = users or {}
        self.acl = acl
        self.local_port = 0
        self.tls_port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "mosquitto.log"

    def layout(self) -> BrokerLayout:
        root = os.geteuid() == 0
        return BrokerLayout(
            directory=self.pki,
            persistence_location=self.workdir / "data",
            pid_file=None,
            log_file=self.log_path,
            local_port=self.local_port,
            tls_port=self.tls_port,
            tls_bind="127.0.0.1",
            acl=self.acl,
            # As root, mosquitto drops to "mosquitto", which cannot read the test's files.
            run_as=pwd.getpwuid(os.geteuid()).pw_name if root else None,
        )

    def cert(self, client: str) -> tuple[Path, Path]:
        """(certificate, key) of a client id given at construction."""
        return self.pki / f"{client}.crt", self.pki / f"{client}.key"

    @property
    def ca(self) -> Path:
        return self.pki / "ca.crt"

    def start(self) -> None:
        issue_site_certificates(
            self.pki, server_names=["localhost", "127.0.0.1"], clients=self.clients
        )
        passwd = shutil.which("mosquitto_passwd")
        if passwd is None:
            pytest.fail("mosquitto_passwd not found: apt-get install mosquitto")
        (self.pki / "passwd").unlink(missing_ok=True)
        for i, (user, password) in enumerate(self.users.items()):
            create = ["-c"] if i == 0 else []
            subprocess.run(
                [passwd, *create, "-b", str(self.pki / "passwd"), user, password], check=True
            )
        if not self.users:
            (self.pki / "passwd").write_text("")
        (self.pki / "acl").write_text(render_acl(self.site))
        (self.workdir / "data").mkdir(exist_ok=True)
        for _attempt in range(3):
            self.local_port, self.tls_port = find_free_port(), find_free_port()
            conf = self.workdir / "mosquitto.conf"
            conf.write_text(render_broker_config(self.layout()))
            self.process = subprocess.Popen(
                [str(MOSQUITTO), "-c", str(conf)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                stdin=subprocess.DEVNULL,
            )
            if self._wait_accepting():
                return
            self.stop()
            if "Address already in use" not in self.log():
                break
        pytest.fail(f"the production config did not start mosquitto; its log:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _wait_accepting(self) -> bool:
        assert self.process is not None
        deadline = time.monotonic() + _START_TIMEOUT_S
        pending = {self.local_port, self.tls_port}
        while pending and time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            for port in list(pending):
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                        pending.discard(port)
                except OSError:
                    time.sleep(0.02)
        return not pending

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
