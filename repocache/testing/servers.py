"""Real git servers on 127.0.0.1 for tests.

* :class:`GitDaemon` runs ``git daemon`` and serves ``git://`` URLs.
* :class:`SmartHTTPServer` serves smart HTTP by running ``git http-backend`` (CGI) behind a small threaded HTTP
  server from the standard library; it can demand basic auth and delay every answer.
* :class:`HangingServer` accepts TCP connections and never answers, to test timeouts.

Each is a context manager with explicit :meth:`~GitDaemon.start` and :meth:`~GitDaemon.stop`; ``stop`` kills the
processes it started and joins every thread it started, and is safe to call twice. Every git process they run gets
:func:`isolated_git_env`: no system or global git config, and ``HOME`` inside a private temporary directory.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hmac
import os
import selectors
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, TypeAlias, TypeVar
from urllib.parse import quote, unquote

if TYPE_CHECKING:
    from repocache.testing.upstream import Upstream

    Target: TypeAlias = Upstream | str | os.PathLike[str]
    """What ``url_for`` accepts: an :class:`~repocache.testing.Upstream`, or a repository path."""

__all__ = ["GitDaemon", "HangingServer", "RecordedRequest", "SmartHTTPServer", "isolated_git_env"]

HOST = "127.0.0.1"
_CHUNK = 64 * 1024
_PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "ftp_proxy", "no_proxy")

_S = TypeVar("_S", bound="_Server")


def isolated_git_env(home: str | os.PathLike[str], extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Return an environment for running git that cannot read or write the user's configuration or home.

    The current environment is copied, then: ``HOME`` and ``XDG_CONFIG_HOME`` point into ``home``; system and
    global git config are off (``GIT_CONFIG_NOSYSTEM=1``; ``GIT_CONFIG_GLOBAL`` is a file of its own in ``home``,
    absent until git writes it, never ``/dev/null``, which a ``git config --global`` run as root would replace);
    git never prompts (``GIT_TERMINAL_PROMPT=0``, no askpass); every other ``GIT_*`` variable except
    ``GIT_TRACE*`` is dropped, so an outer ``GIT_DIR`` cannot leak in; proxy variables are dropped and loopback is
    exempt from proxies.

    Args:
        home: the directory to use as ``HOME`` (it should exist; nothing is written to it unless git does).
        extra: variables to set last.
    """
    env = {
        key: value
        for key, value in os.environ.items()
        if not (key.startswith("GIT_") and not key.startswith("GIT_TRACE"))
        and key.lower() not in _PROXY_VARIABLES
        and key != "SSH_ASKPASS"
    }
    home_path = os.fspath(home)
    env.update(
        HOME=home_path,
        XDG_CONFIG_HOME=os.path.join(home_path, ".config"),
        GIT_CONFIG_NOSYSTEM="1",
        # A file of its own, not /dev/null: as root, a `git config --global` would replace the device.
        GIT_CONFIG_GLOBAL=os.path.join(home_path, ".config", "git", "isolated-global-config"),
        GIT_TERMINAL_PROMPT="0",
        no_proxy=f"{HOST},localhost",
        NO_PROXY=f"{HOST},localhost",
    )
    env.update(extra or {})
    return env


def _path_of(target: Target) -> Path:
    if isinstance(target, (str, os.PathLike)):
        return Path(target)
    return target.path


def _relative_url_path(base: Path, target: Target) -> str:
    """The URL path (without a leading slash) of ``target`` relative to ``base``."""
    path = _path_of(target)
    try:
        relative = path.resolve().relative_to(base.resolve())
    except ValueError:
        raise ValueError(f"{path} is not inside the served directory {base}") from None
    return quote(relative.as_posix(), safe="/")


@dataclass(frozen=True)
class RecordedRequest:
    """One request a :class:`SmartHTTPServer` received.

    Attributes:
        method: ``GET`` or ``POST``.
        path: the URL path, without the query string.
        query: the query string (``service=git-upload-pack``), or ``""``.
        headers: the request headers; the value of ``Authorization`` is replaced by its scheme and ``***``, so a
            recorded request never holds a password.
    """

    method: str
    path: str
    query: str
    headers: Mapping[str, str]


class _Server:
    """Lifecycle shared by the servers: ``start``/``stop`` and use as a context manager."""

    def __init__(self) -> None:
        self._port: int | None = None

    @property
    def host(self) -> str:
        """The address the server listens on (always ``127.0.0.1``)."""
        return HOST

    @property
    def port(self) -> int:
        """The TCP port the server listens on.

        Raises:
            RuntimeError: the server is not running.
        """
        if self._port is None:
            raise RuntimeError(f"{type(self).__name__} is not running; call start() first")
        return self._port

    @property
    def running(self) -> bool:
        """True between :meth:`start` and :meth:`stop`."""
        return self._port is not None

    def start(self) -> None:  # pragma: no cover - every subclass overrides it
        """Start serving; returns once the port accepts connections."""
        raise NotImplementedError

    def stop(self) -> None:  # pragma: no cover - every subclass overrides it
        """Stop serving and release every process, thread and socket. Safe to call more than once."""
        raise NotImplementedError

    def __enter__(self: _S) -> _S:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _require_stopped(self) -> None:
        if self._port is not None:
            raise RuntimeError(f"{type(self).__name__} is already running on port {self._port}")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _kill_group(process: subprocess.Popen[bytes], *, grace: float = 5.0) -> None:
    """Terminate the process group led by ``process`` (it was started in a new session) and reap the leader."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(grace)
    # Children (one per connection for git daemon) live in the same group and may outlive the leader.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


class GitDaemon(_Server):
    """``git daemon`` serving every repository below ``base_path`` over ``git://127.0.0.1:<port>/``.

    Attributes:
        base_path: the directory whose repositories are served (all of them: ``--export-all``).
        startup_timeout: seconds :meth:`start` waits for the daemon to listen.
    """

    def __init__(self, base_path: Path, *, startup_timeout: float = 10.0) -> None:
        """Prepare a daemon; nothing runs until :meth:`start`.

        Args:
            base_path: the directory to serve.
            startup_timeout: seconds to wait for the daemon to listen before :meth:`start` fails.
        """
        super().__init__()
        self.base_path = Path(base_path)
        self.startup_timeout = startup_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._log: Path | None = None

    def url_for(self, target: Target) -> str:
        """Return the ``git://`` URL of ``target``, a repository (or :class:`Upstream`) below ``base_path``."""
        return f"git://{HOST}:{self.port}/{_relative_url_path(self.base_path, target)}"

    @property
    def pid(self) -> int | None:
        """The daemon's process id (also its process group id), or ``None`` when it is not running."""
        return self._process.pid if self._process is not None else None

    @property
    def log_text(self) -> str:
        """What the daemon has written to its (verbose) log so far."""
        if self._log is None or not self._log.exists():
            return ""
        return self._log.read_text(errors="replace")

    def start(self) -> None:
        """Start the daemon and wait until it listens.

        Raises:
            RuntimeError: the daemon exited or did not listen within ``startup_timeout``; the message includes
                its log.
        """
        self._require_stopped()
        self._tmp = tempfile.TemporaryDirectory(prefix="repocache-git-daemon-")
        home = Path(self._tmp.name)
        try:
            for attempt in range(5):
                if self._launch(home, attempt):
                    return
            raise RuntimeError(f"git daemon could not bind a free port:\n{self.log_text}")
        except BaseException:
            self.stop()
            raise

    def _launch(self, home: Path, attempt: int) -> bool:
        """Run the daemon on a fresh port; False if the port was taken meanwhile (the caller retries)."""
        port = _free_port()
        self._log = home / f"daemon-{attempt}.log"
        command = [
            "git",
            "daemon",
            "--verbose",  # prints "Ready to rumble" once it listens: a race-free readiness signal
            "--reuseaddr",
            "--export-all",
            "--informative-errors",
            f"--base-path={self.base_path.resolve()}",
            f"--listen={HOST}",
            f"--port={port}",
        ]
        with open(self._log, "wb") as log:
            # A new session makes the daemon lead a process group, so stop() also reaches its per-connection
            # children.
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=home,
                env=isolated_git_env(home),
                start_new_session=True,
            )
        self._process = process
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if "Ready to rumble" in self.log_text:
                self._port = port
                return True
            if process.poll() is not None:
                if "Address already in use" in self.log_text:
                    self._process = None
                    return False
                raise RuntimeError(f"git daemon exited with status {process.returncode}:\n{self.log_text}")
            time.sleep(0.01)
        raise RuntimeError(f"git daemon did not listen within {self.startup_timeout} s:\n{self.log_text}")

    def stop(self) -> None:
        """Kill the daemon and its children and wait for them. Safe to call more than once."""
        process, self._process = self._process, None
        if process is not None:
            _kill_group(process)
        self._port = None
        tmp, self._tmp = self._tmp, None
        if tmp is not None:
            tmp.cleanup()


class _HTTPServer(ThreadingHTTPServer):
    """A threaded HTTP server that can stop while clients still hold connections open."""

    # Handler threads are joined by server_close(); stop() first shuts their sockets so none can block forever.
    daemon_threads = False
    block_on_close = True

    def __init__(self, owner: SmartHTTPServer) -> None:
        self.owner = owner
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__((HOST, 0), _GitHTTPHandler)

    def handle_error(self, request: object, client_address: object) -> None:
        """Stay quiet about clients that went away (a killed ``git``, or :meth:`SmartHTTPServer.stop`)."""
        import sys

        error = sys.exc_info()[1]
        if self.owner.stopping.is_set() or isinstance(error, (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)  # type: ignore[arg-type]


class _GitHTTPHandler(BaseHTTPRequestHandler):
    """Answers one connection's requests by running ``git http-backend`` for each."""

    protocol_version = "HTTP/1.1"
    # TCP_NODELAY, as web servers set it: with Nagle's algorithm a CGI answer's body would wait for the client's
    # delayed acknowledgement of its head (40 ms on Linux) on every keep-alive request but a connection's first.
    disable_nagle_algorithm = True
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        with self.server.connections_lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        with self.server.connections_lock:
            self.server.connections.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    def log_message(self, format: str, *args: object) -> None:
        """Keep test output clean: requests are recorded in :attr:`SmartHTTPServer.requests` instead."""

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def _serve(self) -> None:
        owner = self.server.owner
        path, _, query = self.path.partition("?")
        authorization = self.headers.get("Authorization")
        owner._record(self.command, path, query, self.headers.items())
        if owner.delay > 0 and owner.stopping.wait(owner.delay):
            self.close_connection = True
            return
        user = owner._check_authorization(authorization, unquote(path))
        if user is None:
            self._refuse()
            return
        self._run_backend(path, query, user)

    def _refuse(self) -> None:
        body = b"Authentication required\n"
        self.send_response(401)
        self.send_header("WWW-Authenticate", 'Basic realm="repocache-test"')
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")  # the unread request body makes the connection unusable
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    def _request_body(self) -> Iterator[bytes]:
        """Yield the request body, from a Content-Length or chunked transfer encoding."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            while True:
                size_line = self.rfile.readline()
                if not size_line:
                    raise ConnectionError("client closed the connection inside a chunked body")
                size = int(size_line.split(b";", 1)[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return
                remaining = size
                while remaining:
                    data = self.rfile.read(min(remaining, _CHUNK))
                    if not data:
                        raise ConnectionError("client closed the connection inside a chunk")
                    remaining -= len(data)
                    yield data
                self.rfile.readline()  # the CRLF that ends the chunk
        else:
            remaining = int(self.headers.get("Content-Length") or 0)
            while remaining:
                data = self.rfile.read(min(remaining, _CHUNK))
                if not data:
                    raise ConnectionError("client closed the connection inside the body")
                remaining -= len(data)
                yield data

    def _cgi_environment(self, path: str, query: str, user: str) -> dict[str, str]:
        owner = self.server.owner
        env = isolated_git_env(
            owner._home,
            {
                "GIT_PROJECT_ROOT": str(owner.base_path.resolve()),
                "GIT_HTTP_EXPORT_ALL": "1",
                "GATEWAY_INTERFACE": "CGI/1.1",
                "SERVER_PROTOCOL": self.request_version,
                "SERVER_SOFTWARE": "repocache-test",
                "SERVER_NAME": HOST,
                "SERVER_PORT": str(owner.port),
                "REQUEST_METHOD": self.command,
                "SCRIPT_NAME": "",
                "PATH_INFO": unquote(path),
                "QUERY_STRING": query,
                "REMOTE_ADDR": self.client_address[0],
            },
        )
        optional = {
            "CONTENT_TYPE": self.headers.get("Content-Type"),
            "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding"),
            "GIT_PROTOCOL": self.headers.get("Git-Protocol"),
        }
        # With chunked transfer encoding there is no length: http-backend then reads its input to the end.
        if "chunked" not in self.headers.get("Transfer-Encoding", "").lower():
            optional["CONTENT_LENGTH"] = self.headers.get("Content-Length")
        if user:
            optional.update(REMOTE_USER=user, AUTH_TYPE="Basic")
        env.update({key: value for key, value in optional.items() if value is not None})
        return env

    def _run_backend(self, path: str, query: str, user: str) -> None:
        owner = self.server.owner
        process = subprocess.Popen(
            [owner._backend],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=owner._backend_log,
            env=self._cgi_environment(path, query, user),
            cwd=owner._home,
        )
        assert process.stdin is not None and process.stdout is not None
        owner._track(process)
        body_error: list[BaseException] = []
        # The body is fed from a second thread: the backend may answer before it has read all of its input.
        feeder = threading.Thread(
            target=self._feed, args=(process.stdin, body_error), name="repocache-http-feed", daemon=True
        )
        feeder.start()
        try:
            self._relay(process.stdout)
        finally:
            feeder.join()
            process.stdout.close()
            process.wait()
            owner._untrack(process)
        if body_error:
            self.close_connection = True

    def _feed(self, stdin: IO[bytes], errors: list[BaseException]) -> None:
        """Copy the request body to the backend; keep draining it if the backend stops reading."""
        backend_reading = True
        try:
            for data in self._request_body():
                if backend_reading:
                    try:
                        stdin.write(data)
                    except OSError:
                        backend_reading = False
        except (OSError, ValueError) as exc:
            errors.append(exc)
        finally:
            with contextlib.suppress(OSError):
                stdin.close()

    def _relay(self, stdout: IO[bytes]) -> None:
        """Turn the CGI's output (``Status:`` and headers, blank line, body) into the HTTP response."""
        status, reason = 200, "OK"
        headers: list[tuple[str, str]] = []
        while True:
            line = stdout.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            if name.strip().lower() == "status":
                code, _, reason = value.strip().partition(" ")
                status = int(code)
            else:
                headers.append((name.strip(), value.strip()))
        if not line:  # the backend wrote no header block at all
            status, reason, headers = 502, "Bad Gateway", [("Content-Length", "0")]
        self.send_response(status, reason or None)
        has_length = any(name.lower() == "content-length" for name, _ in headers)
        chunked = not has_length and self.request_version != "HTTP/1.0"
        for name, value in headers:
            self.send_header(name, value)
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        elif not has_length:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        read = getattr(stdout, "read1", stdout.read)
        while data := read(_CHUNK):
            if chunked:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            else:
                self.wfile.write(data)
        if chunked:
            self.wfile.write(b"0\r\n\r\n")


class SmartHTTPServer(_Server):
    """Smart HTTP (``git http-backend``) serving every repository below ``base_path`` on 127.0.0.1.

    Attributes:
        base_path: the directory whose repositories are served.
        auth: ``(user, password)`` that every request must carry as basic auth, or ``None`` for no auth.
        access: per repository (its URL path below the server, ``org/repo.git``), the ``(user, password)`` pairs
            that may read it; a repository not named is read without credentials (unless ``auth`` is set). Change
            it while the server runs with :meth:`grant` and :meth:`revoke`.
        delay: seconds to wait before answering each request (to simulate a slow or hanging host).
        requests: ``(method, path)`` of every request received, in order; ``path`` excludes the query string.
        requests_with_authorization: how many requests carried an ``Authorization`` header.
        received: every request in full, as :class:`RecordedRequest` (with ``Authorization`` redacted).
    """

    def __init__(
        self,
        base_path: Path,
        *,
        auth: tuple[str, str] | None = None,
        access: Mapping[str, Iterable[tuple[str, str]]] | None = None,
        delay: float = 0.0,
    ) -> None:
        """Prepare a server; nothing listens until :meth:`start`.

        Args:
            base_path: the directory to serve.
            auth: require this basic-auth user and password; others get ``401`` with ``WWW-Authenticate``.
            access: per repository path (``org/repo.git``), the basic-auth pairs that may read it; others get
                ``401`` with ``WWW-Authenticate`` for it.
            delay: seconds to sleep before answering each request; :meth:`stop` cuts the sleep short.
        """
        super().__init__()
        self.base_path = Path(base_path)
        self.auth = auth
        self.access: dict[str, set[tuple[str, str]]] = {
            path.strip("/"): set(pairs) for path, pairs in (access or {}).items()
        }
        self.delay = delay
        self.requests: list[tuple[str, str]] = []
        self.requests_with_authorization = 0
        self.received: list[RecordedRequest] = []
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._processes: set[subprocess.Popen[bytes]] = set()
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._home = ""
        self._backend = ""
        self._backend_log: IO[bytes] | None = None

    def url_for(self, target: Target, *, credentials: bool = False) -> str:
        """Return the ``http://`` URL of ``target``, a repository (or :class:`Upstream`) below ``base_path``.

        Args:
            target: the repository.
            credentials: put the ``auth`` user and password into the URL (``http://user:secret@...``).
        """
        userinfo = ""
        if credentials:
            if self.auth is None:
                raise ValueError("this server has no credentials (auth=None)")
            userinfo = f"{quote(self.auth[0], safe='')}:{quote(self.auth[1], safe='')}@"
        return f"http://{userinfo}{HOST}:{self.port}/{_relative_url_path(self.base_path, target)}"

    @property
    def log_text(self) -> str:
        """What ``git http-backend`` has written to stderr so far."""
        if self._tmp is None:
            return ""
        log = Path(self._tmp.name) / "http-backend.log"
        return log.read_text(errors="replace") if log.exists() else ""

    def start(self) -> None:
        """Bind a free port and serve from a background thread; returns once the port accepts connections."""
        self._require_stopped()
        exec_path = subprocess.run(
            ["git", "--exec-path"], check=True, capture_output=True, text=True, env=isolated_git_env(os.devnull)
        ).stdout.strip()
        self._backend = os.path.join(exec_path, "git-http-backend")
        if not os.access(self._backend, os.X_OK):
            raise RuntimeError(f"git http-backend not found at {self._backend}")
        self._tmp = tempfile.TemporaryDirectory(prefix="repocache-http-")
        self._home = self._tmp.name
        try:
            self._backend_log = open(Path(self._home) / "http-backend.log", "ab")  # noqa: SIM115 - closed in stop()
            self.stopping.clear()
            self._httpd = _HTTPServer(self)  # binds and listens: connections queue from here on
            self._port = self._httpd.server_address[1]
            self._thread = threading.Thread(
                target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="repocache-http-server"
            )
            self._thread.start()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop serving: end the delay sleeps, kill running backends, close connections, join all threads."""
        self.stopping.set()
        httpd, self._httpd = self._httpd, None
        if httpd is not None:
            httpd.shutdown()  # the accept loop
            with self._lock:
                processes = list(self._processes)
            for process in processes:
                if process.poll() is None:
                    process.kill()
            with httpd.connections_lock:
                connections = list(httpd.connections)
            for connection in connections:
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)
            httpd.server_close()  # joins the handler threads
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join()
        if self._backend_log is not None:
            self._backend_log.close()
            self._backend_log = None
        self._port = None
        tmp, self._tmp = self._tmp, None
        if tmp is not None:
            tmp.cleanup()

    def _record(self, method: str, path: str, query: str, headers: list[tuple[str, str]]) -> None:
        redacted = {
            name: f"{value.partition(' ')[0]} ***" if name.lower() == "authorization" else value
            for name, value in headers
        }
        with self._lock:
            self.requests.append((method, path))
            self.received.append(RecordedRequest(method, path, query, redacted))
            if any(name.lower() == "authorization" for name in redacted):
                self.requests_with_authorization += 1

    def grant(self, repository: str, user: str, password: str) -> None:
        """Let ``user:password`` read ``repository`` (``org/repo.git``), which from now on needs credentials."""
        with self._lock:
            self.access.setdefault(repository.strip("/"), set()).add((user, password))

    def revoke(self, repository: str, user: str, password: str) -> None:
        """Refuse ``user:password`` for ``repository`` from the next request on (the repository stays private)."""
        with self._lock:
            self.access.setdefault(repository.strip("/"), set()).discard((user, password))

    def _check_authorization(self, header: str | None, path: str = "") -> str | None:
        """The authenticated user (``""`` when no auth is required), or ``None`` to refuse the request."""
        with self._lock:
            repository = path.strip("/")
            pairs = next(
                (
                    set(allowed)
                    for name, allowed in self.access.items()
                    if repository == name or repository.startswith(name + "/")
                ),
                None,
            )
        if pairs is None:
            if self.auth is None:
                return ""
            pairs = {self.auth}
        scheme, _, encoded = (header or "").partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            given = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            return None
        for user, password in sorted(pairs):
            if hmac.compare_digest(given, f"{user}:{password}".encode()):
                return user
        return None

    def _track(self, process: subprocess.Popen[bytes]) -> None:
        with self._lock:
            self._processes.add(process)
        if self.stopping.is_set():
            process.kill()

    def _untrack(self, process: subprocess.Popen[bytes]) -> None:
        with self._lock:
            self._processes.discard(process)


class HangingServer(_Server):
    """A TCP server on 127.0.0.1 that accepts connections and never sends a byte.

    Git over ``git://`` or ``http://`` to it waits forever (git has no default timeout), which is what tests of
    timeouts and stuck fetches need. Accepted connections are held open until :meth:`stop`.

    Attributes:
        connections: how many connections were accepted so far.
    """

    def __init__(self) -> None:
        """Prepare a server; nothing listens until :meth:`start`."""
        super().__init__()
        self.connections = 0
        self._listener: socket.socket | None = None
        self._held: list[socket.socket] = []
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def url_for(self, target: Target | None = None) -> str:
        """Return a ``git://`` URL on this server; its path is ``target``'s name (default ``x``)."""
        return f"git://{HOST}:{self.port}/{self._name(target)}"

    @property
    def git_url(self) -> str:
        """A ``git://`` URL on this server."""
        return self.url_for()

    @property
    def http_url(self) -> str:
        """An ``http://`` URL on this server."""
        return f"http://{HOST}:{self.port}/x"

    @staticmethod
    def _name(target: Target | None) -> str:
        if target is None:
            return "x"
        return quote(_path_of(target).name, safe="")

    def start(self) -> None:
        """Listen on a free port and accept connections from a background thread."""
        self._require_stopped()
        self._stopping.clear()
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind((HOST, 0))
        listener.listen(128)
        listener.setblocking(False)
        self._listener = listener
        self._port = listener.getsockname()[1]
        self._thread = threading.Thread(target=self._accept_loop, name="repocache-hanging-server")
        self._thread.start()

    def _accept_loop(self) -> None:
        assert self._listener is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self._listener, selectors.EVENT_READ)
            while not self._stopping.is_set():
                if not selector.select(timeout=0.05):
                    continue
                try:
                    connection, _ = self._listener.accept()
                except OSError:
                    continue
                self._held.append(connection)
                self.connections += 1

    def stop(self) -> None:
        """Stop accepting, close every held connection and the listener, and join the thread."""
        self._stopping.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join()
        for connection in self._held:
            connection.close()
        self._held.clear()
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        self._port = None
