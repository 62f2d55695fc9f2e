"""``repocache serve``: the git server (:mod:`repocache.serve`) in front of the cache, until SIGTERM or Ctrl-C."""

from __future__ import annotations

import argparse
import os
import warnings

from repocache.cli.exits import EXIT_OK
from repocache.cli.options import cache_options
from repocache.cli.output import Context
from repocache.errors import ConfigError

_SECRET_VARIABLE = "REPOCACHE_WEBHOOK_SECRET"


def count(value: str) -> int:
    """A count argument: an integer of at least 0."""
    if not value.isdigit():
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number >= 0")
    return int(value)


def listen(value: str) -> str:
    """A HOST:PORT argument, checked here and parsed by the runner."""
    from repocache.serve.runner import parse_listen

    try:
        parse_listen(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


def serve(context: Context) -> int:
    """``serve --allow PREFIX=URL... [--listen HOST:PORT] [...]``."""
    from repocache.cache import RepoCache
    from repocache.serve import GitServer, ServeOptions, Upstreams, parse_allow
    from repocache.serve.auth import AuthChecker, AuthOptions, parse_credentials, parse_trust
    from repocache.serve.runner import bind, make_server, parse_listen

    args = context.args
    upstreams = Upstreams(parse_allow(args.allow or []))
    secret = _webhook_secret(args.webhook_secret_file)
    kept, per_prefix = mirror_filters(args.mirror_filter or [])
    serve_options = ServeOptions(
        max_packs=args.max_packs,
        max_queue=args.max_queue,
        retry_after=max(1, round(args.retry_after)),
        body_timeout=args.body_timeout,
        webhook_secret=secret,
        auth=AuthOptions(
            trust=parse_trust(args.trust_clients, args.trust or []),
            ttl=args.auth_ttl,
            refused_ttl=args.auth_refused_ttl,
            timeout=args.auth_timeout,
            upstream_credentials=parse_credentials(args.upstream_credential_file or []),
        ),
        mirror_filter=kept,
        mirror_filters=per_prefix,
    )
    AuthChecker(upstreams, serve_options.auth).close()  # a prefix that cannot be served is refused before binding
    options = cache_options(args)
    root = options.pop("root")
    if args.auto_ttl:
        options["fetch_ttl"] = "auto"
    if args.refresh is not None:
        options["refresh"] = args.refresh
    where = parse_listen(args.listen)
    sock = bind(where)
    # The cache's warning for a stale copy is logged by the cache and the server already.
    warnings.filterwarnings("ignore", message="serving a stale copy", category=RuntimeWarning)
    cache = RepoCache(root, **options)
    try:
        app = GitServer(cache, upstreams, options=serve_options)
        server = make_server(
            app,
            graceful_timeout=args.graceful_timeout,
            head_timeout=args.head_timeout,
            access_log=args.verbose > 0,
        )
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        context.note(f"serving {cache.root} on http://{shown}:{port}/ for " + ", ".join(sorted(upstreams.allowed)))
        server.run(sockets=[sock])
    finally:
        sock.close()
        cache.close()
    context.note("stopped")
    return EXIT_OK


def mirror_filters(items: list[str]) -> tuple[str | None, dict[str, str | None]]:
    """``--mirror-filter [PREFIX=]FILTER`` items as ``ServeOptions(mirror_filter=, mirror_filters=)`` (``none``
    names full mirrors).

    Raises:
        ConfigError: an item names no filter, or names the global filter or one prefix twice.
    """
    kept: str | None = None
    seen = False
    per_prefix: dict[str, str | None] = {}
    for item in items:
        prefix, sep, value = item.partition("=")  # no filter repocache keeps has a "="
        if not sep:
            value = prefix
        value = value.strip()
        if not value:
            raise ConfigError(f"--mirror-filter {item!r} names no filter; expected blob:none, tree:0 or none")
        spec = None if value == "none" else value
        if not sep:
            if seen:
                raise ConfigError("--mirror-filter without a prefix is given twice")
            kept, seen = spec, True
        else:
            if prefix.strip() in per_prefix:
                raise ConfigError(f"--mirror-filter names {prefix.strip()!r} twice")
            per_prefix[prefix.strip()] = spec
    return kept, per_prefix


def _webhook_secret(path: str | None) -> str | None:
    if path is None:
        return os.environ.get(_SECRET_VARIABLE) or None
    try:
        with open(path, encoding="utf-8") as file:
            secret = file.read().strip()
    except OSError as exc:
        raise ConfigError(f"--webhook-secret-file {path!r} cannot be read: {exc.strerror}") from None
    if not secret:
        raise ConfigError(f"--webhook-secret-file {path!r} is empty")
    return secret
