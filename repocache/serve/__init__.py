"""``repocache serve``: plain git clients clone and fetch through the cache over smart HTTP.

:class:`GitServer` is an ASGI application (serve it with uvicorn, ``pip install '.[serve]'`` from a checkout, or
mount it in another ASGI application); :class:`Upstreams` is its allow-list; :class:`ServeOptions` its bounds;
:func:`run` serves it with uvicorn until SIGTERM or Ctrl-C. See ``docs/serve.md``.
"""

from repocache.serve.app import GitServer, ServeOptions
from repocache.serve.mapping import Refused, Route, Upstreams, parse_allow

__all__ = ["GitServer", "Refused", "Route", "ServeOptions", "Upstreams", "parse_allow"]
