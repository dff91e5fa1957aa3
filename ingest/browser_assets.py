"""Serve circuitshift's Neo4j Browser style sheet and guide from localhost, with CORS headers.

Neo4j Browser fetches `:style URL` and `:play URL` with `fetch()` from its own origin (the server's
HTTP port), so the files must come with `Access-Control-Allow-Origin` (and answer the CORS preflight:
guides are fetched with `pragma` / `cache-control` request headers). Neo4j 5 itself cannot serve
extra static files (its Browser module serves one classpath folder), hence this tiny server:

  * `AssetServer(port).start()` runs it in a thread (tests);
  * `python -m ingest.browser_assets --port P` runs it as a process; `circuitshift db start` starts
    one detached beside the local Neo4j server (pid in `<home>/run/assets.json`) and `db stop` ends it.

`browser_settings(base_url)` is the neo4j.conf lines that make Browser load both on connect
(`browser.post_connect_cmd`) and allow the host (`browser.remote_content_hostname_whitelist`: the name Neo4j 5.26 declares).
The host is `localhost`, which Browser's default allowlist already contains, so the same URLs work
against any server (see README "Exploring circuits in Neo4j Browser").
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path

from queries.exploration import guide_html
from queries.server.local import _pid_alive  # one definition of "is this process alive"

ASSETS = {"/style.grass": ("style.grass", "text/plain; charset=utf-8"),
          "/guide.html": ("guide.html", "text/html; charset=utf-8")}


def asset_bytes(name: str) -> bytes:
    """A served file: the guide is generated from the named statements (queries/exploration.py), so it
    can never go stale; the style sheet is queries/browser/style.grass."""
    if name == "guide.html":
        return guide_html().encode()
    return resources.files("queries.browser").joinpath(name).read_bytes()


def asset_urls(port: int, host: str = "localhost") -> dict[str, str]:
    base = f"http://{host}:{port}"
    return {"style": f"{base}/style.grass", "guide": f"{base}/guide.html"}


def browser_settings(port: int) -> dict[str, str]:
    """neo4j.conf settings: Browser applies the style sheet and opens the guide when it connects."""
    urls = asset_urls(port)
    return {
        "browser.post_connect_cmd": f"style {urls['style']}; play {urls['guide']}",
        "browser.remote_content_hostname_whitelist": "guides.neo4j.com,localhost,127.0.0.1",
    }


class _Handler(BaseHTTPRequestHandler):
    server_version = "circuitshift-assets"

    def _cors(self) -> None:
        self.send_header("Access-Control-Allow-Origin", "*")
        self.send_header("Access-Control-Allow-Methods", "GET, OPTIONS")
        self.send_header("Access-Control-Allow-Headers", "*")
        self.send_header("Access-Control-Max-Age", "600")

    def do_OPTIONS(self):  # noqa: N802 (CORS preflight)
        self.send_response(204)
        self._cors()
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self):  # noqa: N802
        path = self.path.split("?", 1)[0]
        if path not in ASSETS:
            self.send_response(404)
            self._cors()
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        name, ctype = ASSETS[path]
        body = asset_bytes(name)  # read per request: edits show up without a restart
        self.send_response(200)
        self._cors()
        self.send_header("Content-Type", ctype)
        self.send_header("Cache-Control", "no-store")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):  # quiet
        pass


class AssetServer:
    """The asset server on 127.0.0.1:`port` in a daemon thread (`port=0`: any free port)."""

    def __init__(self, port: int = 0):
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), _Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self._thread: threading.Thread | None = None

    def start(self) -> "AssetServer":
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True,
                                        name="circuitshift-assets")
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# -- a detached process beside the local server (circuitshift db start / stop) -----------------------

def _state_file(home: Path) -> Path:
    return Path(home) / "run" / "assets.json"


def saved_port(home: Path) -> int | None:
    try:
        return json.loads(_state_file(home).read_text()).get("port")
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    return _pid_alive(pid)


def running_pid(home: Path) -> int | None:
    try:
        pid = json.loads(_state_file(home).read_text()).get("pid")
    except (OSError, ValueError):
        return None
    return pid if pid and _alive(pid) else None


def start_detached(home: Path, port: int, timeout: float = 10.0) -> int:
    """Start `python -m ingest.browser_assets --port port` in its own session; return its pid."""
    pid = running_pid(home)
    if pid is not None and saved_port(home) == port:
        return pid
    stop_detached(home)
    log = open(Path(home) / "logs" / "assets.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "ingest.browser_assets", "--port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    log.close()
    _state_file(home).write_text(json.dumps({"pid": proc.pid, "port": port}))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            s.settimeout(0.3)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc.pid
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    return proc.pid


def stop_detached(home: Path) -> bool:
    pid = running_pid(home)
    if pid is None:
        return False
    os.kill(pid, signal.SIGTERM)
    for _ in range(50):
        if not _alive(pid):
            break
        time.sleep(0.1)
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    return True


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True)
    args = ap.parse_args(argv)
    server = AssetServer(args.port)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        server.httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.httpd.server_close()


if __name__ == "__main__":
    main()
