"""A real Neo4j 5.26 Community server that circuitshift provisions and runs itself, without Docker.

Neo4j's server tarball is not on Maven Central, but its jars are: we resolve them once with Maven into a
jar cache shared by every server home, write a loopback-only config into the home, and start
`org.neo4j.server.CommunityEntryPoint` with the JVM flags the stock launcher would pass.

A *home* holds one server's conf/, data/, logs/ and run/ (its pid and ports). The CLI's home lives in the
project's git-ignored state folder; tests create throw-away homes on free ports.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from analysis.errors import UserError

NEO4J_VERSION = "5.26.24"
BROWSER_VERSION = "5.24.0"
ENTRY_POINT = "org.neo4j.server.CommunityEntryPoint"

# Flags of the stock `neo4j` launcher; heap flags are added separately (neo4j.conf heap settings are only
# read by that launcher, which we do not use).
JVM_FLAGS = [
    "-XX:+UseG1GC",
    "-XX:-OmitStackTraceInFastThrow",
    "-XX:+UnlockExperimentalVMOptions",
    "-XX:+TrustFinalNonStaticFields",
    "-XX:+DisableExplicitGC",
    "-Djdk.nio.maxCachedBufferSize=1024",
    "-Dio.netty.tryReflectionSetAccessible=true",
    "--add-opens=java.base/java.nio=ALL-UNNAMED",
    "--add-opens=java.base/java.io=ALL-UNNAMED",
    "--add-opens=java.base/sun.nio.ch=ALL-UNNAMED",
    "-Dlog4j2.disable.jmx=true",
]


def default_state_dir() -> Path:
    """The project's git-ignored state folder (`CIRCUITSHIFT_STATE_DIR`, default `./.circuitshift`)."""
    return Path(os.environ.get("CIRCUITSHIFT_STATE_DIR", ".circuitshift")).resolve()


def default_jar_cache() -> Path:
    """Where resolved jars are kept between runs and shared by every server home."""
    base = os.environ.get("CIRCUITSHIFT_JAR_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "circuitshift")
    return Path(base) / f"neo4j-{NEO4J_VERSION}"


def ensure_jars(cache: Path | None = None, quiet: bool = False) -> Path:
    """Resolve the server and Browser jars with Maven into `cache/lib` once; return that folder."""
    cache = cache or default_jar_cache()
    lib = cache / "lib"
    marker = cache / "COMPLETE"
    if marker.exists():
        return lib
    mvn = shutil.which("mvn")
    if mvn is None:
        raise UserError("Maven (`mvn`) is not installed: it is needed once to fetch the Neo4j jars "
                        "(run `bash scripts/setup.sh`, or `apt-get install maven`)")
    cache.mkdir(parents=True, exist_ok=True)
    pom = cache / "pom.xml"
    pom.write_text(resources.files("queries.server").joinpath("neo4j-pom.xml").read_text())
    tmp_lib = cache / "lib.partial"
    shutil.rmtree(tmp_lib, ignore_errors=True)
    if not quiet:
        print(f"Resolving Neo4j {NEO4J_VERSION} jars with Maven into {lib} (once, about a minute)...",
              file=sys.stderr)
    cmd = [mvn, "-B", "-q", "-f", str(pom),
           "org.apache.maven.plugins:maven-dependency-plugin:3.6.1:copy-dependencies",
           "-DincludeScope=runtime", f"-DoutputDirectory={tmp_lib}"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-5:]
        raise UserError("Maven could not resolve the Neo4j jars: " + " | ".join(tail))
    shutil.rmtree(lib, ignore_errors=True)
    tmp_lib.rename(lib)
    marker.write_text(f"{NEO4J_VERSION}\n")
    return lib


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); look at its state where /proc exists.
    stat = Path(f"/proc/{pid}/stat")
    if stat.exists():
        try:
            return stat.read_text().split(") ", 1)[1][0] != "Z"
        except (OSError, IndexError):
            return True
    return True


@dataclass
class ServerStatus:
    running: bool
    pid: int | None
    bolt_port: int
    http_port: int
    home: Path

    @property
    def bolt_uri(self) -> str:
        return f"bolt://127.0.0.1:{self.bolt_port}"

    @property
    def browser_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/browser/"


class LocalServer:
    """One Neo4j server home: config, data, logs, pid and ports."""

    def __init__(self, home: Path, bolt_port: int | None = None, http_port: int | None = None,
                 heap: str | None = None, jar_cache: Path | None = None,
                 extra_conf: dict[str, str] | None = None):
        self.home = Path(home).resolve()
        saved = self._saved_ports()
        self.bolt_port = bolt_port or saved.get("bolt_port") or 7687
        self.http_port = http_port or saved.get("http_port") or 7474
        self.heap = heap or os.environ.get("CIRCUITSHIFT_NEO4J_HEAP", "1g")
        self.jar_cache = jar_cache
        self.extra_conf = extra_conf or {}

    # -- files ---------------------------------------------------------------------------------------
    @property
    def _run_file(self) -> Path:
        return self.home / "run" / "server.json"

    @property
    def console_log(self) -> Path:
        return self.home / "logs" / "console.log"

    def _saved_ports(self) -> dict:
        try:
            return json.loads(self._run_file.read_text())
        except (OSError, ValueError):
            return {}

    def _pid(self) -> int | None:
        pid = self._saved_ports().get("pid")
        return pid if pid and _pid_alive(pid) else None

    def write_conf(self) -> Path:
        conf_dir = self.home / "conf"
        for sub in ("conf", "data", "logs", "run", "plugins", "import"):
            (self.home / sub).mkdir(parents=True, exist_ok=True)
        settings = {
            # Loopback only: the local server is never reachable from another machine.
            "server.default_listen_address": "127.0.0.1",
            "server.default_advertised_address": "127.0.0.1",
            "server.bolt.listen_address": f"127.0.0.1:{self.bolt_port}",
            "server.bolt.advertised_address": f"127.0.0.1:{self.bolt_port}",
            "server.http.listen_address": f"127.0.0.1:{self.http_port}",
            "server.http.advertised_address": f"127.0.0.1:{self.http_port}",
            "server.http.enabled": "true",
            "server.https.enabled": "false",
            "server.bolt.tls_level": "DISABLED",
            "dbms.security.auth_enabled": "true",
            "dbms.usage_report.enabled": "false",
            # The defaults keep days of transaction logs: 2.5M relationships took 1.6 GB on disk.
            "db.tx_log.rotation.retention_policy": "2 files",
            "db.tx_log.rotation.size": "64M",
            "server.memory.pagecache.size": os.environ.get("CIRCUITSHIFT_NEO4J_PAGECACHE", "512m"),
            "server.directories.data": str(self.home / "data"),
            "server.directories.logs": str(self.home / "logs"),
            "server.directories.run": str(self.home / "run"),
            "server.directories.plugins": str(self.home / "plugins"),
            "server.directories.import": str(self.home / "import"),
            "server.logs.gc.enabled": "false",
        }
        settings.update(self.extra_conf)
        path = conf_dir / "neo4j.conf"
        path.write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
        return path

    # -- lifecycle -----------------------------------------------------------------------------------
    def status(self) -> ServerStatus:
        pid = self._pid()
        return ServerStatus(running=pid is not None and _port_open(self.bolt_port), pid=pid,
                            bolt_port=self.bolt_port, http_port=self.http_port, home=self.home)

    def start(self, timeout: float = 120.0) -> ServerStatus:
        """Start the server in the background and return once Bolt answers. A no-op when running."""
        current = self.status()
        if current.running:
            return current
        if current.pid is not None:  # alive but not answering yet: wait for it instead of a second JVM
            return self._wait_for_bolt(current.pid, timeout)
        java = shutil.which("java")
        if java is None:
            raise UserError("Java 17 is not installed: run `bash scripts/setup.sh` (or `apt-get install "
                            "openjdk-17-jre-headless`)")
        for port in (self.bolt_port, self.http_port):
            if _port_open(port):
                raise UserError(f"port {port} on 127.0.0.1 is already taken by another program; "
                                "choose others with --bolt-port/--http-port")
        lib = ensure_jars(self.jar_cache)
        self.write_conf()
        cmd = [java, f"-Xms{self.heap}", f"-Xmx{self.heap}", *JVM_FLAGS,
               "-cp", f"{self.home / 'plugins'}/*:{lib}/*", ENTRY_POINT,
               f"--home-dir={self.home}", f"--config-dir={self.home / 'conf'}"]
        log = open(self.console_log, "ab")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=self.home, start_new_session=True)
        log.close()
        self._run_file.write_text(json.dumps(
            {"pid": proc.pid, "bolt_port": self.bolt_port, "http_port": self.http_port}))
        return self._wait_for_bolt(proc.pid, timeout)

    def _wait_for_bolt(self, pid: int, timeout: float) -> ServerStatus:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not _pid_alive(pid):
                raise UserError(f"Neo4j exited during start-up; log tail: {self.log_tail()}")
            if _port_open(self.bolt_port) and _port_open(self.http_port):
                return self.status()
            time.sleep(0.25)
        raise UserError(f"Neo4j did not answer on Bolt port {self.bolt_port} within {timeout:.0f} s; "
                        f"log tail: {self.log_tail()}")

    def stop(self, timeout: float = 60.0) -> bool:
        """Stop the server (SIGTERM, then SIGKILL after `timeout`). Returns False if it was not running."""
        pid = self._pid()
        if pid is None:
            return False
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
        try:  # reap it if we are its parent (tests), so it does not linger as a zombie
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        return True

    def log_tail(self, lines: int = 5) -> str:
        logs = [self.console_log, self.home / "logs" / "neo4j.log", self.home / "logs" / "debug.log"]
        for path in logs:
            if path.exists() and path.stat().st_size:
                text = path.read_text(errors="replace").strip().splitlines()
                errors = [ln for ln in text if "ERROR" in ln or "Exception" in ln]
                return " | ".join((errors or text)[-lines:])
        return "(no log written)"
