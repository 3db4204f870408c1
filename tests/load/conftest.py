"""A Postgres server of the load tests' own, so stopping it mid-run costs no other test."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.fixtures.postgres_server import PostgresCluster, PostgresUnavailableError, _stop_datadir


class StoppableCluster(PostgresCluster):
    """A cluster that can be stopped and started again on the same data and port (an outage)."""

    def pause(self) -> None:
        assert self.base is not None
        _stop_datadir(self._run_as, self.bindir, self.datadir, self.base)

    def resume(self) -> None:
        assert self.base is not None and self.port is not None
        options = {
            "port": str(self.port),
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": str(self.base),
            **self.settings,
        }
        opts = " ".join(f"-c {key}={value}" for key, value in options.items())
        result = self._run(
            [
                *(str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-l", str(self.logfile)),
                *("-w", "-t", "60", "-o", opts, "start"),
            ]
        )
        if result.returncode != 0:
            raise PostgresUnavailableError(f"restart failed:\n{result.stdout}\n{result.stderr}")


@pytest.fixture
def outage_postgres() -> Iterator[tuple[Any, str]]:
    from src.repositories.postgres import migrate

    cluster = StoppableCluster().start()
    try:
        dsn = cluster.create_database("load")
        migrate(dsn)
        yield cluster, dsn
    finally:
        cluster.stop()
