"""GitServer: an ASGI application serving the cache's mirrors to plain git clients over smart HTTP.

One request, start to end:

1. the path is routed by the allow-list (:mod:`repocache.serve.mapping`) before anything else: a refused path
   costs no lock, no disk and no upstream contact;
2. a ``git-upload-pack`` request's body is read (inflated when gzip-encoded), bounded in size and in the time
   between its chunks;
3. the repository is held as a reader (:meth:`AsyncRepoCache.checkout <repocache.AsyncRepoCache.checkout>`:
   a miss clones once across every process of the root, a due hit fetches once for all its concurrent readers,
   as the cache's freshness rules say) for the whole request, the streaming of the pack included, so eviction
   never removes a mirror that is being served. ``info/refs`` is where freshness is decided; the
   ``git-upload-pack`` requests that follow it in the same clone read the mirror as it is (``max_age=None``),
   so the refs a client was shown are the refs it is served;
4. git's own ``upload-pack --stateless-rpc`` answers from the bare mirror with the client's ``Git-Protocol``
   header as ``GIT_PROTOCOL`` (:mod:`repocache.serve.packs`: shared by identical requests, bounded, spooled); an
   advertisement or a v2 ref listing that upload-pack already gave for the same state is sent from memory
   (:mod:`repocache.serve.answers`).

Blocking work (locks, the index, clones and fetches, the ref tips) runs in the cache's worker threads; upload-pack
runs as an asyncio subprocess. Nothing here blocks the event loop longer than a page-cache read (a remembered
answer's key stats the few config files git reads, and reads one that changed) or the parsing of a request body of
at most 64 KiB.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import resource
import tempfile
import time
import uuid
import zlib
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from repocache import gitops, webhooks
from repocache.aio import AsyncRepoCache
from repocache.cache import RepoCache
from repocache.checkout import Checkout
from repocache.errors import (
    BudgetError,
    CloneError,
    ConfigError,
    FetchError,
    InvalidURLError,
    LockTimeoutError,
    RepoCacheError,
    WebhookError,
)
from repocache.events import ServeEvent
from repocache.gitops.upload_pack import GIT_PROTOCOL_PATTERN, upload_pack_command
from repocache.keys import RepoURL, normalize_url
from repocache.refresh import USE_TTL, MaxAge
from repocache.serve.answers import Answers
from repocache.serve.auth import AuthChecker, AuthOptions, Unauthorized
from repocache.serve.filters import (
    UploadRequest,
    check_mirror_filter,
    mirror_filter_of,
    parse_upload_request,
    serving_filter,
)
from repocache.serve.mapping import Refused, Route, Upstreams
from repocache.serve.packs import Body, Busy, Generation, Generations
from repocache.serve.pktline import service_announcement

__all__ = ["GitServer", "ServeOptions"]

logger = logging.getLogger("repocache")

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
_T = TypeVar("_T")

_ADVERTISEMENT = b"application/x-git-upload-pack-advertisement"
_RESULT = b"application/x-git-upload-pack-result"
_REQUEST = "application/x-git-upload-pack-request"
_NO_CACHE = [
    (b"cache-control", b"no-cache, max-age=0, must-revalidate"),
    (b"pragma", b"no-cache"),
    (b"expires", b"Fri, 01 Jan 1980 00:00:00 GMT"),
]
_IN_MEMORY_BODY = 1 << 20
_PARSED_ON_LOOP = 64 * 1024
_KEPT = 4096  # normalized upstream URLs kept (then all forgotten at once)
_PARSED_KEPT = 256  # parsed request bodies kept, each of at most _PARSED_KEPT_BYTES (a few MiB in all)
_PARSED_KEPT_BYTES = 16 * 1024
_PUSH_REFUSED = (
    "this is a read-only cache of {upstream}; push to the upstream itself "
    "(git push {upstream}, or set a pushurl: git remote set-url --push origin {upstream})"
)


@dataclass(frozen=True)
class ServeOptions:
    """How the server bounds its work and its clients.

    Attributes:
        max_packs: ``git-upload-pack`` answers generated at once (each is one upload-pack process).
        max_queue: further answers that may wait for a slot; beyond, 503 with ``Retry-After``.
        retry_after: the seconds a 503 tells the client to wait.
        max_body_bytes: the largest request body, after inflating (a want/have negotiation of a large
            repository is a few MiB).
        body_timeout: seconds a client may pause while sending its request body (then 408).
        send_timeout: seconds a client may refuse to read the answer before the request is abandoned.
        webhook_secret: the shared secret of push webhooks at ``/-/webhook`` (None: the route is off).
        spool_dir: where pack answers and large bodies are spooled (unlinked files; default: the system's).
        max_header_bytes: the largest request head (path, query and headers) answered; larger is 431. (uvicorn's
            h11 bounds only a head that arrives in pieces; one that arrives whole in one read is checked here.)
        auth: how clients' credentials are checked against upstream (:mod:`repocache.serve.auth`).
        mirror_filter: the filter of the mirrors the server keeps: None (full, the default) or ``"blob:none"``. A
            blob-less mirror serves the ref advertisement and the requests filtered ``blob:none`` or ``tree:0``;
            any other request is served from a full mirror (:mod:`repocache.serve.filters`).
        mirror_filters: per allowed prefix (``{"github.com": "blob:none"}``), a filter overriding ``mirror_filter``
            (None: full mirrors for that prefix).
    """

    max_packs: int = 4
    max_queue: int = 64
    retry_after: int = 5
    max_body_bytes: int = 64 << 20
    body_timeout: float = 60.0
    send_timeout: float = 300.0
    webhook_secret: str | None = None
    spool_dir: str | None = None
    max_header_bytes: int = 16 * 1024
    auth: AuthOptions = field(default_factory=AuthOptions)
    mirror_filter: str | None = None
    mirror_filters: Mapping[str, str | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("max_packs", "retry_after", "max_body_bytes", "max_header_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name}={value!r} is not accepted; expected an int of at least 1")
        if isinstance(self.max_queue, bool) or not isinstance(self.max_queue, int) or self.max_queue < 0:
            raise ConfigError(f"max_queue={self.max_queue!r} is not accepted; expected an int of at least 0")
        for name in ("body_timeout", "send_timeout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
                raise ConfigError(f"{name}={value!r} is not accepted; expected finite seconds > 0")
        if self.webhook_secret is not None and not self.webhook_secret:
            raise ConfigError("webhook_secret must not be empty (None turns the webhook route off)")
        check_mirror_filter(self.mirror_filter)
        if not isinstance(self.mirror_filters, Mapping):
            raise ConfigError(
                f"mirror_filters={self.mirror_filters!r} is not accepted; expected a mapping of prefixes to filters"
            )
        prefixes: dict[str, str | None] = {}
        for prefix, value in self.mirror_filters.items():
            if not isinstance(prefix, str) or not prefix.strip("/"):
                raise ConfigError(f"mirror_filters: prefix {prefix!r} is not accepted; expected an allowed prefix")
            prefixes[prefix.strip("/").lower()] = check_mirror_filter(value, name=f"mirror_filters[{prefix!r}]")
        object.__setattr__(self, "mirror_filters", prefixes)


@dataclass
class _Answer:
    """What one request came to, for its event."""

    service: str
    url: str = ""
    key: str = ""
    outcome: str = "served"
    status: int = 200
    bytes_sent: int = 0
    shared: bool = False
    remembered: bool = False
    queued_seconds: float = 0.0
    auth: str = ""
    auth_cached: bool = False
    responded: bool = False
    started: float = field(default_factory=time.perf_counter)


class _Gone(Exception):
    """The client went away."""


class GitServer:
    """An ASGI application: git clients clone and fetch through the cache (``git clone http://cache/github.com/o/r``).

    ```python
    import repocache
    from repocache.serve import GitServer

    cache = repocache.RepoCache("/var/cache/repos", fetch_ttl=60)
    app = GitServer(cache, {"git.example.com": "https://git.example.com/"})
    # uvicorn.run(app, host="0.0.0.0", port=8080), or mount it in another ASGI application
    ```

    Routes: ``/<prefix>/<path>[.git]/info/refs?service=git-upload-pack`` and ``.../git-upload-pack`` (smart
    HTTP, protocol v0 and v2); pushes (``git-receive-pack``) are refused with 403 and a message naming the
    upstream; ``/-/health`` answers JSON; ``/-/webhook`` takes push webhooks when ``webhook_secret`` is set.

    Attributes:
        upstreams: the allow-list.
        options: the bounds.
        cache: the cache served (closing the server closes it).
        counts: requests answered, by outcome (this process).
        bytes_sent: body bytes sent (this process).
        generations: the pack generations running, shared and queued.
        answers: the small answers remembered (:mod:`repocache.serve.answers`).
    """

    def __init__(
        self,
        cache: RepoCache | AsyncRepoCache,
        upstreams: Upstreams | Mapping[str, str],
        *,
        options: ServeOptions | None = None,
        max_workers: int = 64,
    ) -> None:
        """Serve ``cache`` for the prefixes ``upstreams`` allows.

        Args:
            cache: the cache (a :class:`~repocache.RepoCache` is wrapped in an
                :class:`~repocache.AsyncRepoCache` with ``max_workers`` threads: one per repository being
                cloned, fetched or waited for at once).
            upstreams: the allow-list, or the mapping to build it from (``{"github.com": "https://github.com/"}``).
            options: the bounds (:class:`ServeOptions`).
            max_workers: threads for blocking work when ``cache`` is a RepoCache.

        Raises:
            ConfigError: the allow-list or an option is invalid, or no git binary is available.
        """
        self.options = options or ServeOptions()
        self.upstreams = upstreams if isinstance(upstreams, Upstreams) else Upstreams(upstreams)
        unknown = sorted(set(self.options.mirror_filters) - set(self.upstreams.allowed))
        if unknown:
            raise ConfigError(
                f"mirror_filters names {', '.join(map(repr, unknown))}, which the allow-list does not; allowed "
                "prefixes: " + ", ".join(sorted(self.upstreams.allowed))
            )
        self.cache = cache if isinstance(cache, AsyncRepoCache) else AsyncRepoCache(cache, max_workers=max_workers)
        git = gitops.find_git()
        if git is None:
            raise ConfigError("the git server runs git's upload-pack: install git (or unset REPOCACHE_GIT)")
        self._git = git
        self._git_options = gitops.GitOptions(git=git, allow_local=False)
        self.generations = Generations(
            max_packs=self.options.max_packs, max_queue=self.options.max_queue, spool_dir=self.options.spool_dir
        )
        self.answers = Answers(git)
        self.counts: Counter[str] = Counter()
        self.bytes_sent = 0
        self.auth = AuthChecker(self.upstreams, self.options.auth)
        self._requests: dict[str, UploadRequest | None] = {}  # by the body's sha256
        self._upstream_urls: dict[str, RepoURL] = {}

    async def aclose(self) -> None:
        """Close the cache (waiting for its calls in flight); closing twice is a no-op."""
        self.auth.close()
        await self.cache.close()

    # -- ASGI -------------------------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI entry point (``http`` and ``lifespan`` scopes)."""
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path = scope.get("raw_path") or scope["path"].encode("utf-8", "surrogateescape")
        head = len(path) + len(scope.get("query_string", b"")) + sum(len(k) + len(v) + 4 for k, v in scope["headers"])
        if head > self.options.max_header_bytes:
            answer = _Answer(service="unrouted", outcome="refused")
            reason = f"the request head is {head} bytes; at most {self.options.max_header_bytes} are accepted"
            await self._text(send, answer, 431, reason, None)
            self._finish(answer)
            return
        if path == b"/-/health":
            await self._health(scope, send)
            return
        if path == b"/-/webhook" and self.options.webhook_secret is not None:
            await self._webhook(scope, receive, send)
            return
        answer = _Answer(service="unrouted")
        try:
            route = self.upstreams.route(path)
            answer.service = route.service
            await self._git_request(scope, receive, send, route, answer)
        except Refused as refused:
            if answer.outcome == "served":
                answer.outcome = "refused"
            retry = refused.retry_after if isinstance(refused, _Retry) else None
            challenge = refused.challenge if isinstance(refused, Unauthorized) else None
            if not answer.responded:
                await self._text(send, answer, refused.status, refused.reason, retry, challenge)
        except _Gone:
            answer.outcome = "gone"
        except Exception:
            logger.exception("git server: request for %r failed", path[:200])
            answer.outcome = "failed"
            if not answer.responded:
                with contextlib.suppress(Exception):
                    await self._text(send, answer, 500, "internal error of the cache server (see its log)", None)
        finally:
            self._finish(answer)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # -- git -------------------------------------------------------------------------------------------------

    async def _git_request(self, scope: Scope, receive: Receive, send: Send, route: Route, answer: _Answer) -> None:
        method = scope["method"]
        query = scope.get("query_string", b"").decode("latin-1")
        parsed = self._upstream_urls.get(route.upstream)
        if parsed is None:  # a route's upstream is never a local path: its normalized form depends on it alone
            parsed = normalize_url(route.upstream)
            if len(self._upstream_urls) >= _KEPT:
                self._upstream_urls.clear()
            self._upstream_urls[route.upstream] = parsed
        answer.url, answer.key = parsed.url, parsed.key
        service = _query_service(query) if route.service == "info/refs" else route.service
        if service == "git-receive-pack" or route.service == "git-receive-pack":
            raise Refused(403, _PUSH_REFUSED.format(upstream=route.upstream))
        protocol = _header(scope, b"git-protocol")
        if not GIT_PROTOCOL_PATTERN.fullmatch(protocol):
            raise Refused(400, "the Git-Protocol header may hold only letters, digits and '=:._-' (at most 256)")
        if route.service == "info/refs":
            if method not in ("GET", "HEAD"):
                raise Refused(405, "info/refs is read with GET")
            if service != "git-upload-pack":
                raise Refused(
                    403, "only git's smart HTTP is served: ask for info/refs?service=git-upload-pack (git does)"
                )
            await self._authorize(scope, route, answer)
            await self._advertise(scope, receive, send, route, protocol, answer)
            return
        if method != "POST":
            raise Refused(405, "git-upload-pack takes a POST")
        content_type = _header(scope, b"content-type")
        if content_type != _REQUEST:
            raise Refused(415, f"git-upload-pack takes a body of type {_REQUEST}, not {content_type or 'none'}")
        await self._authorize(scope, route, answer)
        body, digest = await self._read_body(scope, receive)
        try:
            await self._upload_pack(scope, receive, send, route, protocol, body, digest, answer)
        finally:
            body.close()

    async def _authorize(self, scope: Scope, route: Route, answer: _Answer) -> None:
        """The client's credentials checked against upstream before anything is done for it (no lock, clone,
        fetch, advertisement or pack): a refusal is 401 with ``WWW-Authenticate``, no answer from upstream 502."""
        given = [value for name, value in scope["headers"] if name == b"authorization"]
        if len(given) > 1:
            raise Refused(400, "the request has more than one Authorization header; send one")
        authorization = given[0].decode("latin-1").strip() if given else ""
        decision = await self.auth.decide(route, authorization)
        answer.auth, answer.auth_cached = decision.outcome, decision.cached
        refusal = self.auth.refusal(route, decision, given=bool(authorization))
        if refusal is not None:
            answer.outcome = "unauthorized" if decision.outcome == "refused" else "upstream"
            raise refusal

    async def _advertise(
        self, scope: Scope, receive: Receive, send: Send, route: Route, protocol: str, answer: _Answer
    ) -> None:
        if self.generations.full():
            raise self._busy(answer)
        v2 = _is_v2(protocol)
        prefix = b"" if v2 else service_announcement("git-upload-pack")
        # The v2 capability advertisement lists no refs: its key needs no ref tips (v0's are read in the hold's thread).
        read = _no_tips if v2 else _ref_tips_of
        async with self._held(route, USE_TTL, answer, self._filter_for(route, None), read) as (checkout, tips):
            await self._remembered_or_made(
                receive, send, checkout.path, protocol, tips, "", Body(), _ADVERTISEMENT, prefix, answer, advertise=True
            )

    async def _upload_pack(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        route: Route,
        protocol: str,
        body: Body,
        digest: str,
        answer: _Answer,
    ) -> None:
        request = await self._request_of(body, digest)
        async with self._held(route, None, answer, self._filter_for(route, request), _ref_tips_of) as (checkout, tips):
            mirror = checkout.path
            if checkout.filter is not None and request is not None and request.wants:
                await self._fetch_missing(route, checkout.filter, mirror, request, answer)
                tips = await asyncio.to_thread(gitops.ref_tips, mirror)  # as upload-pack will find them
            if request is not None and request.command == "ls-refs":
                await self._remembered_or_made(
                    receive, send, mirror, protocol, tips, digest, body, _RESULT, b"", answer, advertise=False
                )
                return
            asked = request.filter if request is not None else None
            served = [str(mirror), checkout.filter, asked, protocol, sorted(tips.items())]
            state = hashlib.sha256(json.dumps(served).encode()).hexdigest()
            key = f"{state}:{digest}"
            command = self._command(mirror, advertise=False, protocol=protocol)
            try:
                async with self.generations.joined(key, command, body, limited=True) as (generation, joined):
                    answer.shared = joined
                    await self._stream(receive, send, generation, _RESULT, b"", answer)
                    answer.queued_seconds = generation.queued_seconds
            except Busy:
                raise self._busy(answer) from None

    async def _request_of(self, body: Body, digest: str) -> UploadRequest | None:
        """What ``body`` (whose sha256 is ``digest``) asks for, or None when it is malformed (upload-pack itself
        refuses it, from the mirror the refs came from, saying why). Parsed once per distinct body: the clients of
        a burst of identical clones send identical bodies."""
        if digest in self._requests:
            return self._requests[digest]
        request: UploadRequest | None
        try:
            # A small body (every ls-refs, most fetches) is parsed on the loop: a thread hop costs more.
            request = _parse_body(body) if body.size <= _PARSED_ON_LOOP else await asyncio.to_thread(_parse_body, body)
        except ValueError:
            request = None
        if body.size <= _PARSED_KEPT_BYTES:
            if len(self._requests) >= _PARSED_KEPT:
                self._requests.clear()
            self._requests[digest] = request
        return request

    async def _remembered_or_made(
        self,
        receive: Receive,
        send: Send,
        mirror: Any,
        protocol: str,
        tips: Mapping[str, str] | None,
        digest: str,
        body: Body,
        content_type: bytes,
        prefix: bytes,
        answer: _Answer,
        *,
        advertise: bool,
    ) -> None:
        """An advertisement or ref listing: from memory when its key's answer is remembered, else made by
        upload-pack (shared by identical concurrent requests) and remembered (:mod:`repocache.serve.answers`)."""
        argv, env = upload_pack_command(self._git_options, self._git, mirror, advertise=advertise, protocol=protocol)
        await self.answers.prepare(env)
        key = self.answers.key(argv, env, mirror, tips=tips, body=digest)
        if key is not None:
            data = self.answers.get(key)
            if data is not None:
                answer.remembered = True
                await self._whole(send, content_type, prefix + data, answer)
                return
        shared_key = f"answer:{key}" if key is not None else uuid.uuid4().hex
        try:
            async with self.generations.joined(shared_key, lambda: (argv, env), body, limited=not advertise) as (
                generation,
                joined,
            ):
                answer.shared = joined
                await self._stream(receive, send, generation, content_type, prefix, answer)
                answer.queued_seconds = generation.queued_seconds
                if key is None or joined or generation.returncode != 0 or not generation.done:
                    return
                if generation.written > self.answers.max_answer_bytes:
                    return
                data = generation.read_whole()
                # Remembered only if the state read after the answer is the state its key was read from.
                again = await asyncio.to_thread(gitops.ref_tips, mirror) if tips is not None else None
                if self.answers.key(argv, env, mirror, tips=again, body=digest) == key:
                    self.answers.remember(key, data)
        except Busy:
            raise self._busy(answer) from None

    async def _whole(self, send: Send, content_type: bytes, data: bytes, answer: _Answer) -> None:
        """A small answer sent in one piece."""
        headers = [(b"content-type", content_type), (b"content-length", str(len(data)).encode()), *_NO_CACHE]
        answer.responded = True
        answer.status = 200
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": data, "more_body": False})
        self._sent(answer, len(data))

    def _filter_for(self, route: Route, request: UploadRequest | None) -> str | None:
        """The filter of the mirror that serves ``request`` (None: the ref advertisement) on ``route``."""
        kept = mirror_filter_of(route.prefix, self.options.mirror_filter, self.options.mirror_filters)
        return serving_filter(request, kept)

    async def _fetch_missing(
        self, route: Route, filter: str, mirror: Any, request: UploadRequest, answer: _Answer
    ) -> None:
        """Fetch from upstream the wanted objects a held partial mirror lacks (a client's lazy fetch of blobs or
        trees its own filter left out), so upload-pack never meets a missing object."""
        absent = await asyncio.to_thread(gitops.absent_objects, mirror, request.wants)
        if not absent:
            return
        try:
            await self.cache.fetch_missing(self.auth.fetch_url(route), oids=absent, filter=filter)
        except FetchError as exc:
            answer.outcome = "upstream"
            raise Refused(
                502, f"the cache cannot fetch {len(absent)} missing objects of {route.upstream}: {exc.detail}"
            ) from None
        except LockTimeoutError as exc:
            answer.outcome = "busy"
            raise _Retry(503, f"the cache is busy with {route.upstream}: {exc}", self.options.retry_after) from None

    def _command(
        self, mirror: Any, *, advertise: bool, protocol: str
    ) -> Callable[[], tuple[list[str], dict[str, str]]]:
        return lambda: upload_pack_command(self._git_options, self._git, mirror, advertise=advertise, protocol=protocol)

    def _busy(self, answer: _Answer) -> Refused:
        answer.outcome = "busy"
        return _Retry(
            503,
            f"the cache server is busy ({self.generations.active} packs being made, {self.generations.queued} "
            f"waiting); retry in {self.options.retry_after} s",
            self.options.retry_after,
        )

    @contextlib.asynccontextmanager
    async def _held(
        self,
        route: Route,
        max_age: MaxAge,
        answer: _Answer,
        filter: str | None,
        read: Callable[[Checkout], Any],
    ) -> Any:
        """The mirror of ``route`` for ``filter`` (or one holding more) held as a reader for the block: its
        :class:`~repocache.Checkout` and what ``read`` returned, read in the hold's thread (the event loop for a
        plain hit); cache errors become answers git shows."""
        try:
            # The reads (the ref tips: small files; or nothing) run on the loop when the hit is held there.
            manager = self.cache.checkout_and_read(
                self.auth.fetch_url(route), read, read_on_loop=True, max_age=max_age, filter=filter
            )
            checkout, value = await manager.__aenter__()
        except CloneError as exc:
            answer.outcome = "upstream"
            raise Refused(502, f"the cache cannot clone {route.upstream} from upstream: {exc.detail}") from None
        except FetchError as exc:
            answer.outcome = "upstream"
            raise Refused(502, f"the cache cannot fetch {route.upstream} from upstream: {exc.detail}") from None
        except BudgetError as exc:
            answer.outcome = "failed"
            raise Refused(507, f"the cache has no room for {route.upstream}: {exc}") from None
        except LockTimeoutError as exc:
            answer.outcome = "busy"
            raise _Retry(503, f"the cache is busy with {route.upstream}: {exc}", self.options.retry_after) from None
        except InvalidURLError as exc:
            answer.outcome = "refused"
            raise Refused(400, f"the repository path is not accepted: {exc.reason}") from None
        except RepoCacheError as exc:
            answer.outcome = "failed"
            raise Refused(500, f"the cache failed for {route.upstream}: {exc}") from None
        try:
            if checkout.stale:
                answer.outcome = "stale"
                logger.warning("git server: serving a stale copy of %s (its fetch failed)", checkout.url)
            answer.key = checkout.key
            yield checkout, value
        finally:
            await manager.__aexit__(None, None, None)

    async def _stream(
        self,
        receive: Receive,
        send: Send,
        generation: Generation,
        content_type: bytes,
        prefix: bytes,
        answer: _Answer,
    ) -> None:
        """Answer with the generation's output as it is spooled; an upload-pack that failed before writing
        anything is answered 400 with what it said (a malformed request), never a hang."""
        await generation.wait_past(0)
        if generation.written == 0 and generation.done and generation.returncode != 0:
            answer.outcome = "failed"
            said = generation.stderr.decode("utf-8", "replace").strip() or f"exit status {generation.returncode}"
            raise Refused(400, f"git upload-pack refused the request: {said}")
        gone = asyncio.create_task(_disconnected(receive))
        sending = asyncio.create_task(self._send_all(send, generation, content_type, prefix, answer))
        left = False
        try:
            done, _ = await asyncio.wait({gone, sending}, return_when=asyncio.FIRST_COMPLETED)
            left = sending not in done
        finally:
            gone.cancel()
            if not sending.done():
                sending.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sending
        if generation.returncode not in (None, 0) and answer.outcome == "served":
            answer.outcome = "failed"
        if left and answer.outcome in ("served", "stale"):
            answer.outcome = "gone"
        elif not left:
            sending.result()  # a send that timed out or failed is this request's error

    async def _send_all(
        self, send: Send, generation: Generation, content_type: bytes, prefix: bytes, answer: _Answer
    ) -> None:
        deadline = _SendDeadline(send, self.options.send_timeout)
        try:
            await self._send_each(deadline, generation, content_type, prefix, answer)
        except asyncio.CancelledError:
            if not deadline.expired:
                raise
            deadline.uncancel()
            logger.info("git server: a client read nothing for %g s; abandoned", self.options.send_timeout)
            raise _Gone() from None
        finally:
            deadline.close()

    async def _send_each(
        self, deadline: _SendDeadline, generation: Generation, content_type: bytes, prefix: bytes, answer: _Answer
    ) -> None:
        headers = [(b"content-type", content_type), *_NO_CACHE]
        answer.responded = True
        answer.status = 200
        await deadline.send({"type": "http.response.start", "status": 200, "headers": headers})
        if prefix:
            await deadline.send({"type": "http.response.body", "body": prefix, "more_body": True})
            self._sent(answer, len(prefix))
        async for data in generation.stream():
            await deadline.send({"type": "http.response.body", "body": data, "more_body": True})
            self._sent(answer, len(data))
        await deadline.send({"type": "http.response.body", "body": b"", "more_body": False})

    def _sent(self, answer: _Answer, count: int) -> None:
        answer.bytes_sent += count
        self.bytes_sent += count

    # -- request bodies -------------------------------------------------------------------------------------

    async def _read_body(self, scope: Scope, receive: Receive) -> tuple[Body, str]:
        """The request body, inflated, bounded, into memory or a temporary file; and its sha256."""
        limit = self.options.max_body_bytes
        encoding = _header(scope, b"content-encoding").lower()
        if encoding in ("gzip", "x-gzip"):
            inflater: Any = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif encoding in ("", "identity"):
            inflater = None
        else:
            raise Refused(415, f"Content-Encoding {encoding!r} is not accepted; expected gzip or none")
        declared = _header(scope, b"content-length")
        if declared.isdigit() and int(declared) > limit:
            raise Refused(413, f"the request body is {declared} bytes; at most {limit} are accepted")
        body = Body()
        memory = bytearray()
        digest = hashlib.sha256()
        received = 0

        def keep(data: bytes) -> None:
            if not data:
                return
            body.size += len(data)
            if body.size > limit:
                raise Refused(413, f"the request body is larger than {limit} bytes (inflated); it is not accepted")
            digest.update(data)
            if body.file is None and len(memory) + len(data) > _IN_MEMORY_BODY:
                body.file = tempfile.TemporaryFile(dir=self.options.spool_dir)  # noqa: SIM115 - Body.close
                body.file.write(memory)
                memory.clear()
            if body.file is not None:
                body.file.write(data)
            else:
                memory.extend(data)

        deadline = _Deadline(self.options.body_timeout)  # one timer per body, not one wait_for per chunk
        try:
            while True:
                try:
                    message = await deadline.wait(receive())
                except asyncio.CancelledError:
                    if not deadline.expired:
                        raise
                    deadline.uncancel()
                    raise Refused(
                        408, f"the request body stalled for {self.options.body_timeout:g} s; send it whole"
                    ) from None
                if message["type"] == "http.disconnect":
                    raise _Gone()
                chunk = message.get("body", b"")
                received += len(chunk)
                if received > limit:
                    raise Refused(413, f"the request body is larger than {limit} bytes; it is not accepted")
                if inflater is None:
                    keep(chunk)
                else:
                    try:
                        while chunk:
                            keep(inflater.decompress(chunk, 1 << 20))
                            chunk = inflater.unconsumed_tail
                    except zlib.error:
                        raise Refused(400, "the gzip-encoded request body is corrupt") from None
                if not message.get("more_body", False):
                    break
            if inflater is not None:
                keep(inflater.flush())
                if not inflater.eof:
                    raise Refused(400, "the gzip-encoded request body is truncated")
        except BaseException:
            body.close()
            raise
        finally:
            deadline.close()
        if body.file is not None:
            body.file.flush()
        else:
            body.data = bytes(memory)
        return body, digest.hexdigest()

    # -- other routes and answers ---------------------------------------------------------------------------

    async def _health(self, scope: Scope, send: Send) -> None:
        value = {
            "status": "ok",
            "packs_running": self.generations.active,
            "packs_queued": self.generations.queued,
            "pack_shares": self.generations.shared,
            "answers_remembered": self.answers.hits,
            "requests": dict(self.counts),
            "bytes_sent": self.bytes_sent,
            "auth_checks": dict(self.auth.counts),
            "auth_upstream_checks": self.auth.upstream_checks,
            "cpu_seconds": _cpu_seconds(),
        }
        await _json(send, 200, value)

    async def _webhook(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] != "POST":
            await _json(send, 405, {"error": "only POST is accepted"})
            return
        secret = self.options.webhook_secret
        assert secret is not None
        chunks: list[bytes] = []
        size = 0
        while True:
            try:
                message = await asyncio.wait_for(receive(), self.options.body_timeout)
            except TimeoutError:
                await _json(send, 408, {"error": "the request body stalled"})
                return
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > webhooks.MAX_BODY_BYTES:
                await _json(send, 413, {"error": f"at most {webhooks.MAX_BODY_BYTES} bytes are accepted"})
                return
            if not message.get("more_body", False):
                break
        headers = [(name.decode("latin-1"), value.decode("latin-1")) for name, value in scope["headers"]]
        cache = self.cache.cache
        try:
            event, marked = await asyncio.to_thread(webhooks.handle, cache, headers, b"".join(chunks), secret=secret)
        except WebhookError as exc:
            logger.warning("webhook refused (%d): %s", exc.status, exc.reason)
            await _json(send, exc.status, {"error": exc.reason})
            return
        await _json(
            send, 200, {"provider": event.provider, "event": event.event, "urls": list(event.urls), "marked": marked}
        )

    async def _text(
        self,
        send: Send,
        answer: _Answer,
        status: int,
        reason: str,
        retry_after: int | None,
        challenge: str | None = None,
    ) -> None:
        """A refusal git shows its user: each line of a text/plain body becomes ``remote: ...``."""
        answer.status = status
        answer.responded = True
        data = f"repocache: {reason}\n".encode()
        headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(data)).encode())]
        if retry_after is not None:
            headers.append((b"retry-after", str(retry_after).encode()))
        if challenge is not None:
            headers.append((b"www-authenticate", challenge.encode("ascii")))
        headers += _NO_CACHE
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": data, "more_body": False})
        self._sent(answer, len(data))

    def _finish(self, answer: _Answer) -> None:
        self.counts[answer.outcome] += 1
        event = ServeEvent(
            url=answer.url,
            key=answer.key,
            at=time.time(),
            service=answer.service,
            outcome=answer.outcome,
            status=answer.status,
            bytes_sent=answer.bytes_sent,
            seconds=time.perf_counter() - answer.started,
            shared=answer.shared,
            remembered=answer.remembered,
            queued_seconds=answer.queued_seconds,
            queue_length=self.generations.queued,
            auth=answer.auth,
            auth_cached=answer.auth_cached,
        )
        logger.info(
            "git server: %s %s %s %d (%d bytes%s%s; mirror %s)",
            answer.service,
            answer.url or "-",
            answer.outcome,
            answer.status,
            answer.bytes_sent,
            ", shared" if answer.shared else ", remembered" if answer.remembered else "",
            f", auth {answer.auth}{' from memory' if answer.auth_cached else ''}" if answer.auth else "",
            answer.key or "-",
        )
        self.cache.cache.report(event)


class _Deadline:
    """A bound on each of a task's waits: a wait still pending ``seconds`` after it began cancels the task
    (``expired``).

    One timer for all the waits of a request instead of one ``asyncio.wait_for`` (a task and a timer) per wait: the
    timer checks, when it fires, whether a wait is pending and since when, and is re-armed for that wait's deadline
    if it is not yet due. Time spent between waits never counts.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.expired = False
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        self._since: float | None = None
        self._timer: asyncio.TimerHandle | None = None

    async def wait(self, awaitable: Awaitable[_T]) -> _T:
        """Await ``awaitable``; the task is cancelled if it takes ``seconds``."""
        self._since = since = self._loop.time()
        if self._timer is None:
            self._timer = self._loop.call_at(since + self.seconds, self._check)
        try:
            return await awaitable
        finally:
            self._since = None

    def _check(self) -> None:
        self._timer = None
        since = self._since
        if since is None or self._task is None:
            return  # no wait pending: the next one arms the timer again
        due = since + self.seconds
        if self._loop.time() >= due:
            self.expired = True
            self._task.cancel()
        else:
            self._timer = self._loop.call_at(due, self._check)

    def uncancel(self) -> None:
        """Take back the cancellation the deadline made (Python 3.11+ counts them), so the task may end normally."""
        uncancel = getattr(self._task, "uncancel", None)
        if uncancel is not None:
            uncancel()

    def close(self) -> None:
        """Drop the timer."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class _SendDeadline(_Deadline):
    """``send``, bounded: a send still pending ``seconds`` after it began cancels the task sending (``expired``).
    Time spent between sends (upload-pack still working) never counts."""

    def __init__(self, send: Send, seconds: float) -> None:
        super().__init__(seconds)
        self._send = send

    async def send(self, message: Message) -> None:
        """Hand ``message`` to the ASGI server; the task is cancelled if it takes ``seconds``."""
        await self.wait(self._send(message))


class _Retry(Refused):
    """A refusal that tells the client when to come back (``Retry-After``)."""

    def __init__(self, status: int, reason: str, retry_after: int) -> None:
        super().__init__(status, reason)
        self.retry_after = retry_after


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1")).strip()
    return ""


def _query_service(query: str) -> str:
    for item in query.split("&"):
        key, _, value = item.partition("=")
        if key == "service":
            return value
    return ""


def _parse_body(body: Body) -> UploadRequest:
    """The command, filter and wants of a request body (in memory or spooled); the body is not consumed."""
    if body.file is None:
        data = body.data
        offset = 0

        def read_memory(count: int) -> bytes:
            nonlocal offset
            chunk = data[offset : offset + count]
            offset += len(chunk)
            return chunk

        return parse_upload_request(read_memory)
    fileno = body.file.fileno()
    position = 0

    def read_file(count: int) -> bytes:
        nonlocal position
        chunk = os.pread(fileno, min(count, 1 << 16), position)
        position += len(chunk)
        return chunk

    return parse_upload_request(read_file)


def _no_tips(checkout: Checkout) -> None:
    """Nothing read from the held mirror (an answer that lists no refs)."""


def _ref_tips_of(checkout: Checkout) -> dict[str, str]:
    """The held mirror's ref tips (read in the hold's worker thread)."""
    return gitops.ref_tips(checkout.path)


def _cpu_seconds() -> dict[str, float]:
    """CPU seconds (user and system) of this process, every thread, and of its child processes that have ended
    (upload-pack, pack-objects), since the process started; to the microsecond, where ``ps`` shows 10 ms ticks."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"process": own.ru_utime + own.ru_stime, "children": children.ru_utime + children.ru_stime}


def _is_v2(protocol: str) -> bool:
    return "version=2" in protocol.split(":")


async def _disconnected(receive: Receive) -> None:
    """Return when the client has gone away (the request body was already read)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def _json(send: Send, status: int, value: Mapping[str, object]) -> None:
    data = json.dumps(value).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()), *_NO_CACHE]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data, "more_body": False})
