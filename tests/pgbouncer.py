"""A real PgBouncer (Debian's ``pgbouncer`` package) in transaction pooling mode, started by
a test in front of one database, with its admin console."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import psycopg2
from sqlalchemy.engine import make_url

from tests.processes import free_port
from tests.services import unavailable

CONFIG = """\
[databases]
{name} = host={host} port={port} dbname={name}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {listen}
unix_socket_dir =
auth_type = trust
auth_file = {users}
admin_users = {user}
pool_mode = transaction
max_client_conn = 500
default_pool_size = {pool}
; Adversarial on purpose: every server connection stays open, and each transaction takes the
; one idle longest, so a client's consecutive transactions land on different connections
; and any state a session leaves behind shows at once (LIFO, the default, hides it at light
; load by handing a lone client the connection it just used).
min_pool_size = {pool}
server_round_robin = 1
"""


def find_pgbouncer() -> str:
    """The binary, or skip (fail in CI, where .ci/run installs it)."""
    found = shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin")
    if found is None:
        unavailable("pgbouncer is not installed (apt-get install pgbouncer; .ci/run does)")
    return found


class PgBouncer:
    """PgBouncer on a free loopback port in front of the database of ``direct_url``."""

    def __init__(self, direct_url: str, home: Path, pool: int = 5) -> None:
        url = make_url(direct_url)
        if not url.host:  # an embedded Postgres on a unix socket
            unavailable("PgBouncer's test needs Postgres on TCP (127.0.0.1:5432 in CI)")
        self.direct = url
        self.database = url.database or ""
        self.user = url.username or "postgres"
        self.port = free_port()
        self.pool = pool
        home.mkdir(parents=True, exist_ok=True)
        users = home / "userlist.txt"
        users.write_text(f'"{self.user}" ""\n')
        config = home / "pgbouncer.ini"
        config.write_text(
            CONFIG.format(
                name=self.database, host=url.host, port=url.port or 5432, listen=self.port,
                users=users, user=self.user, pool=pool,
            )
        )  # fmt: skip
        self.log_path = home / "pgbouncer.log"
        self._log = self.log_path.open("ab")
        # It refuses to run as root; as root, -u drops to nobody after reading its files.
        user = ["-u", "nobody"] if os.geteuid() == 0 else []
        self.proc = subprocess.Popen(
            [find_pgbouncer(), *user, str(config)], stdout=self._log, stderr=subprocess.STDOUT
        )
        self._wait_listening()

    @property
    def url(self) -> str:
        """The same database, through PgBouncer."""
        bounced = self.direct.set(host="127.0.0.1", port=self.port)
        return bounced.render_as_string(hide_password=False)

    def _wait_listening(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"pgbouncer exited:\n{self.log()}")
            try:
                self.show("VERSION")
                return
            except psycopg2.OperationalError:
                time.sleep(0.1)
        raise TimeoutError(f"pgbouncer not listening after {timeout}s:\n{self.log()}")

    def show(self, what: str) -> list[dict[str, Any]]:
        """``SHOW <what>`` on the admin console, each row as a dict."""
        conn = psycopg2.connect(
            host="127.0.0.1", port=self.port, dbname="pgbouncer", user=self.user
        )
        conn.autocommit = True  # the console runs no transactions
        try:
            with conn.cursor() as cursor:
                cursor.execute(f"SHOW {what}")
                names = [column.name for column in cursor.description or ()]
                return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
        finally:
            conn.close()

    def mine(self, what: str) -> list[dict[str, Any]]:
        """The rows of ``SHOW <what>`` about this database."""
        return [row for row in self.show(what) if row.get("database") == self.database]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()
