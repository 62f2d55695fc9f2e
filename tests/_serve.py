"""What the git server's tests share: the server as a real process (``repocache serve``) or in a thread, git clones
through it, a throttling TCP proxy (a slow client), and raw HTTP requests."""

from __future__ import annotations

import concurrent.futures
import contextlib
import http.client
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from repocache import RepoCache
from repocache.serve import GitServer, ServeOptions
from repocache.serve.auth import CHECK_USER_AGENT
from repocache.serve.runner import Listen, bind, make_server
from repocache.testing import RecordedRequest, SmartHTTPServer, isolated_git_env
from tests.helpers import PROJECT


def base_of(server: SmartHTTPServer) -> str:
    """The upstream base URL a test server's prefix maps to: the smart HTTP upstream ``server`` on 127.0.0.1."""
    return f"http://127.0.0.1:{server.port}/"


def is_auth_check(request: RecordedRequest) -> bool:
    """Whether ``request`` is the server's check of a client's credentials (not a clone or fetch of the cache)."""
    return any(name.lower() == "user-agent" and value == CHECK_USER_AGENT for name, value in request.headers.items())


def auth_checks(server: SmartHTTPServer) -> int:
    """How many checks of clients' credentials reached ``server``."""
    return sum(1 for request in server.received if is_auth_check(request))


PREFIX = "up.test"
"""The allowed prefix the tests serve their upstream under."""


def git_env(home: Path) -> dict[str, str]:
    """The environment of a git client of the tests (no user config, no prompts)."""
    home.mkdir(parents=True, exist_ok=True)
    return isolated_git_env(home)


def clone(
    url: str, dest: Path, *args: str, version: int = 2, env: Mapping[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``git -c protocol.version=V clone ARGS URL DEST`` (not checked: the caller asserts)."""
    return subprocess.run(
        ["git", "-c", f"protocol.version={version}", "clone", *args, url, str(dest)],
        capture_output=True,
        text=True,
        env=dict(env),
        timeout=timeout,
        check=False,
    )


def clones_at_once(
    url: str, directory: Path, count: int, *, env: Mapping[str, str], version: int | None = None
) -> None:
    """``count`` clones of ``url`` at once into ``directory/c0``, ``c1``, ...; each must succeed. ``version``:
    the protocol of every clone, or None to alternate v0 and v2."""
    with concurrent.futures.ThreadPoolExecutor(count) as pool:
        futures = [
            pool.submit(clone, url, directory / f"c{n}", env=env, version=n % 2 * 2 if version is None else version)
            for n in range(count)
        ]
        results = [future.result(timeout=150) for future in futures]
    assert [r.returncode for r in results] == [0] * count, [r.stderr for r in results]


class ServeProcess:
    """``python -m repocache --root ROOT serve --listen 127.0.0.1:0 --allow up.test=UPSTREAM ...`` as a process."""

    def __init__(self, root: Path, upstream_base: str, *args: str, global_args: tuple[str, ...] = ()) -> None:
        command = [
            sys.executable,
            "-m",
            "repocache",
            "--root",
            str(root),
            *global_args,
            "serve",
            "-v",
            "--listen",
            "127.0.0.1:0",
            "--allow",
            f"{PREFIX}={upstream_base}",
            *args,
        ]
        env = dict(os.environ, PYTHONPATH=str(PROJECT))
        self.process = subprocess.Popen(command, cwd=PROJECT, stderr=subprocess.PIPE, text=True, env=env)
        assert self.process.stderr is not None
        first = self.process.stderr.readline()
        if "http://127.0.0.1:" not in first:
            rest = self.process.communicate(timeout=30)[1]
            raise AssertionError(f"repocache serve did not start: {first}{rest}")
        self.port = int(first.split("http://127.0.0.1:")[1].split("/")[0])
        self.lines: list[str] = [first]
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)

    @property
    def log(self) -> str:
        """What the server wrote to stderr so far."""
        return "".join(self.lines)

    def url(self, path: str) -> str:
        """``http://127.0.0.1:PORT/up.test/<path>``."""
        return f"http://127.0.0.1:{self.port}/{PREFIX}/{path}"

    def health(self) -> dict[str, Any]:
        """The ``/-/health`` answer."""
        return health(self.port)

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the server."""
        self.process.send_signal(signum)

    def wait(self, timeout: float = 60) -> int:
        """Wait for the server to exit; its exit code."""
        code = self.process.wait(timeout=timeout)
        self._reader.join(timeout=10)
        self._close_pipe()
        return code

    def _close_pipe(self) -> None:
        if not self._reader.is_alive() and self.process.stderr is not None:
            self.process.stderr.close()  # read to its end by the reader: closed here, not by the collector

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it does not stop in time."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)
        self._reader.join(timeout=10)
        self._close_pipe()


@contextlib.contextmanager
def serve_process(
    root: Path, upstream_base: str, *args: str, global_args: tuple[str, ...] = ()
) -> Iterator[ServeProcess]:
    """A :class:`ServeProcess` for the block."""
    server = ServeProcess(root, upstream_base, *args, global_args=global_args)
    try:
        yield server
    finally:
        server.stop()


class ThreadServer:
    """A :class:`GitServer` on uvicorn in a thread of this process, on 127.0.0.1 (the tests hold its cache)."""

    def __init__(
        self, cache: RepoCache, upstream_base: str, options: ServeOptions | None = None, **runner: Any
    ) -> None:
        self.app = GitServer(cache, {PREFIX: upstream_base}, options=options)
        self.server = make_server(self.app, **runner)
        self.sock = bind(Listen("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> ThreadServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)
        self.sock.close()
        assert not self.thread.is_alive(), "the server did not stop"

    def url(self, path: str) -> str:
        """``http://127.0.0.1:PORT/up.test/<path>``."""
        return f"http://127.0.0.1:{self.port}/{PREFIX}/{path}"


def health(port: int) -> dict[str, Any]:
    """The ``/-/health`` answer of the server on ``port``."""
    status, _headers, body = request(port, "GET", "/-/health")
    assert status == 200, body
    value: dict[str, Any] = json.loads(body)
    return value


def request(
    port: int, method: str, path: str, body: bytes | None = None, headers: Mapping[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP request with the path sent exactly as given; (status, headers, body)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.putrequest(method, path, skip_host=False, skip_accept_encoding=True)
        for name, value in (headers or {}).items():
            connection.putheader(name, value)
        if body is not None:
            connection.putheader("Content-Length", str(len(body)))
        connection.endheaders(body)
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


class ThrottlingProxy:
    """A TCP proxy on 127.0.0.1 that passes server-to-client bytes at ``rate`` bytes a second (a slow client)."""

    def __init__(self, target_port: int, rate: int, *, receive_buffer: int | None = None) -> None:
        self.target_port = target_port
        self.rate = rate
        self.receive_buffer = receive_buffer  # SO_RCVBUF towards the server (small: the server's sends block)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.relayed = 0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._accepting = threading.Thread(target=self._accept, daemon=True)
        self._accepting.start()

    def _accept(self) -> None:
        self.listener.settimeout(0.1)
        while not self._stop.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            upstream = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            if self.receive_buffer is not None:
                upstream.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.receive_buffer)
            upstream.connect(("127.0.0.1", self.target_port))
            thread = threading.Thread(target=self._relay, args=(client, upstream), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _relay(self, client: socket.socket, upstream: socket.socket) -> None:
        selector = selectors.DefaultSelector()
        selector.register(client, selectors.EVENT_READ, upstream)
        selector.register(upstream, selectors.EVENT_READ, client)
        chunk = max(1, self.rate // 20)
        try:
            while not self._stop.is_set():
                for key, _ in selector.select(timeout=0.1):
                    source: socket.socket = key.fileobj  # type: ignore[assignment]
                    data = source.recv(chunk if source is upstream else 65536)
                    if not data:
                        return
                    key.data.sendall(data)
                    if source is upstream:
                        self.relayed += len(data)
                        time.sleep(len(data) / self.rate)
        except OSError:
            return
        finally:
            selector.close()
            client.close()
            upstream.close()

    def close(self) -> None:
        """Stop relaying and join every thread."""
        self._stop.set()
        self.listener.close()
        self._accepting.join(timeout=10)
        for thread in self._threads:
            thread.join(timeout=10)


def wait_until(predicate: Any, timeout: float = 30, what: str = "the condition") -> None:
    """Poll ``predicate`` until it is true, failing after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what} did not happen in {timeout}s"
        time.sleep(0.02)


def ls_remote(url: str, env: dict[str, str], version: int = 2) -> dict[str, str]:
    """``git ls-remote URL`` through the server: ref name -> id (checked)."""
    done = subprocess.run(
        ["git", "-c", f"protocol.version={version}", "ls-remote", url],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return {name: oid for oid, name in (line.split("\t") for line in done.stdout.splitlines())}
