"""A throwaway PostgreSQL cluster under the data directory, from Debian's binaries.

``initdb`` refuses to run as root, so when the stack is started by root the cluster belongs to
a non-root account (``postgres_os_user``) and every server command runs through ``runuser``.
Passwords are generated at ``initdb`` time and kept in ``<data_dir>/pgpass`` (mode 0600), never in
the repository.
"""

from __future__ import annotations

import asyncio
import glob
import hashlib
import os
import pwd
import secrets
import shutil
import subprocess
from pathlib import Path

from assessment_store.core import MissingTool, ServiceFailed, Settings

from ._procs import LogFn, ServiceStatus, check_port_free, is_alive, pss_bytes, read_pid, rss_bytes, tail

__all__ = ["PostgresService"]

_PG_HINT = "apt-get install -y postgresql  (Debian's PostgreSQL 15 server binaries)"
_SUPERUSER = "postgres"


class PostgresService:
    name = "postgres"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.data_root = settings.data_dir.resolve()
        self.logs = self.data_root / "logs"
        self._pgdata: Path | None = None

    # --- where and as whom ------------------------------------------------------------

    def bin_dir(self) -> Path:
        if self.settings.postgres_bin_dir is not None:
            candidates = [str(self.settings.postgres_bin_dir)]
        else:
            candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]))[::-1]
            pg_config = shutil.which("pg_config")
            if pg_config:
                out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True).stdout.strip()
                if out:
                    candidates.append(out)
        for c in candidates:
            if (Path(c) / "initdb").exists() and (Path(c) / "pg_ctl").exists():
                return Path(c)
        raise MissingTool("initdb", _PG_HINT)

    def _as_root(self) -> bool:
        return os.geteuid() == 0

    def _run_as(self) -> list[str]:
        return ["runuser", "-u", self.settings.postgres_os_user, "--"] if self._as_root() else []

    def _owner(self) -> tuple[int, int]:
        if not self._as_root():
            return os.getuid(), os.getgid()
        try:
            pw = pwd.getpwnam(self.settings.postgres_os_user)
        except KeyError as e:
            raise MissingTool(
                f"the account {self.settings.postgres_os_user!r}",
                "apt-get install -y postgresql  (creates it), or set ASSESSMENT_STORE_POSTGRES_OS_USER",
            ) from e
        return pw.pw_uid, pw.pw_gid

    def pgdata(self) -> Path:
        """``<data_dir>/postgres``, or when root and the cluster's account cannot reach it (a data
        directory under /root, say), a directory of its own under /var/tmp, recorded so later
        runs find it."""
        if self._pgdata is not None:
            return self._pgdata
        pointer = self.data_root / "postgres.location"
        if pointer.exists():
            self._pgdata = Path(pointer.read_text().strip())
            return self._pgdata
        preferred = self.data_root / "postgres"
        self.data_root.mkdir(parents=True, exist_ok=True)
        if not self._as_root() or self._reachable(self.data_root):
            self._pgdata = preferred
        else:
            digest = hashlib.sha1(str(self.data_root).encode()).hexdigest()[:12]
            self._pgdata = Path("/var/tmp") / f"assessment-store-{digest}" / "postgres"
            pointer.write_text(f"{self._pgdata}\n")
        return self._pgdata

    @property
    def log_file(self) -> Path:
        """``<data_dir>/logs/postgres.log``; beside the cluster when the cluster had to move out of a
        data directory its account cannot reach (the server writes its log itself, as that account)."""
        pgdata = self.pgdata()
        return self.logs / "postgres.log" if pgdata == self.data_root / "postgres" else pgdata.parent / "postgres.log"

    def _reachable(self, path: Path) -> bool:
        probe = subprocess.run([*self._run_as(), "test", "-x", str(path)], capture_output=True)
        return probe.returncode == 0

    # --- lifecycle --------------------------------------------------------------------

    def pid(self) -> int | None:
        pgdata = self.pgdata()
        pid = read_pid(pgdata / "postmaster.pid")
        return pid if is_alive(pid, str(pgdata)) else None

    def _pg(self, tool: str, *args: str, timeout_s: float = 120.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self._run_as(), str(self.bin_dir() / tool), *args],
            capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL,
        )

    def _initdb(self, log: LogFn) -> None:
        pgdata = self.pgdata()
        uid, gid = self._owner()
        pgdata.mkdir(parents=True, exist_ok=True)
        os.chown(pgdata, uid, gid)
        os.chmod(pgdata, 0o700)
        super_pw, app_pw = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
        pwfile = pgdata.parent / f".initdb-pw-{os.getpid()}"
        pwfile.write_text(super_pw + "\n")
        os.chown(pwfile, uid, gid)
        os.chmod(pwfile, 0o600)
        log(f"initialising a PostgreSQL cluster in {pgdata}")
        try:
            r = self._pg(
                "initdb", "-D", str(pgdata), "-U", _SUPERUSER, f"--pwfile={pwfile}", "-E", "UTF8",
                "--no-locale", "--auth-host=scram-sha-256", "--auth-local=peer",
            )
        finally:
            pwfile.unlink(missing_ok=True)
        if r.returncode != 0:
            raise ServiceFailed("postgres", "initdb failed", (r.stdout + r.stderr)[-3000:])
        host = self.settings.postgres_host
        passfile = self.settings.postgres_passfile
        passfile.write_text(
            f"{host}:*:*:{_SUPERUSER}:{super_pw}\n{host}:*:*:{self.settings.postgres_user}:{app_pw}\n"
        )
        os.chmod(passfile, 0o600)

    def start(self, log: LogFn = print, timeout_s: float = 60.0) -> bool:
        """Start the cluster unless it runs, then make sure role, database and schema exist."""
        started = False
        if self.pid() is None:
            self.bin_dir()
            if not (self.pgdata() / "PG_VERSION").exists():
                self._initdb(log)
            elif not self.settings.postgres_passfile.exists() and self.settings.postgres_dsn is None:
                # A relocated cluster outlives a data directory deleted by hand (rather than by
                # `stack purge`): its passwords went with the directory, so nothing could log in.
                raise ServiceFailed(
                    "postgres", f"the cluster in {self.pgdata()} has no passwords in {self.settings.postgres_passfile} "
                    "(was the data directory deleted by hand?); remove the cluster with "
                    f"`rm -rf {self.pgdata().parent}` to start afresh, or restore the data directory")
            check_port_free(self.settings.postgres_host, self.settings.postgres_port, "postgres")
            self.log_file.parent.mkdir(parents=True, exist_ok=True)
            self.log_file.touch(mode=0o600)
            self.log_file.chmod(0o600)
            os.chown(self.log_file, *self._owner())
            pgdata = str(self.pgdata())
            opts = (
                f"-p {self.settings.postgres_port} -c listen_addresses={self.settings.postgres_host} -k {pgdata}"
                " -c max_connections=200 -c shared_buffers=128MB"
            )
            r = self._pg("pg_ctl", "start", "-D", pgdata, "-l", str(self.log_file), "-w",
                         "-t", str(int(timeout_s)), "-o", opts)
            if r.returncode != 0:
                raise ServiceFailed("postgres", f"pg_ctl start failed: {r.stderr.strip()}", tail(self.log_file))
            started = True
        asyncio.run(self._ensure_database(log))
        return started

    async def _ensure_database(self, log: LogFn) -> None:
        import asyncpg

        from assessment_store.projections import connect, migrate, translate_db_errors

        s = self.settings
        with translate_db_errors("preparing the role and database"):
            admin = await asyncpg.connect(
                host=s.postgres_host, port=s.postgres_port, user=_SUPERUSER, database="postgres",
                passfile=str(s.postgres_passfile),
            )
            try:
                if not await admin.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", s.postgres_user):
                    app_pw = _password_for(s.postgres_passfile, s.postgres_user)
                    # DDL takes no bind parameters: quote through format(%I, %L) on the server.
                    ddl = await admin.fetchval(
                        "SELECT format('CREATE ROLE %I LOGIN PASSWORD %L', $1::text, $2::text)",
                        s.postgres_user, app_pw,
                    )
                    await admin.execute(ddl)
                if not await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", s.postgres_db):
                    ddl = await admin.fetchval(
                        "SELECT format('CREATE DATABASE %I OWNER %I', $1::text, $2::text)",
                        s.postgres_db, s.postgres_user,
                    )
                    await admin.execute(ddl)
                    log(f"created database {s.postgres_db}")
            finally:
                await admin.close()
        conn = await connect(s)
        try:
            applied = await migrate(conn)
            if applied:
                log(f"applied projection schema: {', '.join(applied)}")
        finally:
            await conn.close()

    def stop(self) -> bool:
        if self.pid() is None:
            return False
        r = self._pg("pg_ctl", "stop", "-D", str(self.pgdata()), "-m", "fast", "-w", "-t", "60")
        if r.returncode != 0 and self.pid() is not None:
            raise ServiceFailed("postgres", f"pg_ctl stop failed: {r.stderr.strip()}", tail(self.log_file))
        return True

    def status(self) -> ServiceStatus:
        pid = self.pid()
        return ServiceStatus(
            name=self.name,
            running=pid is not None,
            pid=pid,
            address=f"{self.settings.postgres_host}:{self.settings.postgres_port} db={self.settings.postgres_db}",
            data=str(self.pgdata()),
            log=str(self.log_file),
            rss_bytes=_cluster_rss(pid),
        )

    def log_path(self) -> Path:
        return self.log_file


def _password_for(passfile: Path, user: str) -> str:
    for line in passfile.read_text().splitlines():
        parts = line.split(":")
        if len(parts) == 5 and parts[3] == user:
            return parts[4]
    raise ServiceFailed("postgres", f"no password for {user!r} in {passfile}")


def _cluster_rss(postmaster: int | None) -> int | None:
    """Memory of the postmaster and its children (backends, walwriter, ...): the sum of their
    PSS where readable, else of their RSS (which counts shared buffers once per process)."""
    if postmaster is None:
        return None

    def mem(pid: int) -> int:
        return pss_bytes(pid) or rss_bytes(pid) or 0

    total = mem(postmaster)
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid == postmaster:
                total += mem(int(proc.name))
    return total
