"""The throwaway-cluster fixture itself: it must start, stop, clean up after killed runs, and
fail loudly (never skip) where Postgres should be available."""

from __future__ import annotations

import os
import socket

import psycopg
import pytest

from tests.fixtures import postgres_server
from tests.fixtures.postgres_server import PostgresCluster, PostgresUnavailableError


def _refused(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) != 0


def test_a_cluster_starts_on_loopback_and_stop_removes_everything() -> None:
    cluster = PostgresCluster().start()
    base, port = cluster.base, cluster.port
    assert base is not None and port is not None
    try:
        with psycopg.connect(cluster.dsn(), connect_timeout=5) as conn:
            assert conn.execute("SHOW listen_addresses").fetchone() == ("127.0.0.1",)
            assert conn.execute("SHOW fsync").fetchone() == ("off",)  # a test cluster: speed over durability
        if os.geteuid() == 0:
            assert base.stat().st_uid != 0  # owned by the postgres OS user the server runs as
    finally:
        cluster.stop()
    assert not base.exists()
    assert _refused(port)
    cluster.stop()  # idempotent


def test_a_cluster_left_by_a_killed_run_is_reaped() -> None:
    orphan = PostgresCluster().start()
    base, port = orphan.base, orphan.port
    assert base is not None and port is not None
    try:
        # Pretend its owner died without cleaning up (SIGKILL: no atexit, no finalizer).
        (base / "owner.pid").write_text(str(_dead_pid()))
        postgres_server._reap_stale_clusters()
        assert not base.exists()
        assert _refused(port)
    finally:
        orphan.stop()


def _dead_pid() -> int:
    pid = 2**22 - 1
    while postgres_server._pid_alive(pid):
        pid -= 1
    return pid


def test_missing_binaries_are_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(postgres_server, "find_bindir", lambda: None)
    with pytest.raises(PostgresUnavailableError, match="apt-get install -y postgresql"):
        PostgresCluster()


def test_unavailable_postgres_fails_in_ci_and_as_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="Postgres tests cannot run"):
        postgres_server._unavailable("no binaries")
    monkeypatch.delenv("CI")
    monkeypatch.setenv("OBS_REQUIRE_POSTGRES", "1")
    with pytest.raises(pytest.fail.Exception):
        postgres_server._unavailable("no binaries")
    monkeypatch.delenv("OBS_REQUIRE_POSTGRES")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)  # a developer without root: a skip, with the reason
    with pytest.raises(pytest.skip.Exception, match="not root"):
        postgres_server._unavailable("no binaries")
