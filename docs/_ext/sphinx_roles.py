"""A griffe extension for the docs build: Sphinx roles in docstrings become cross-references.

The docstrings are Google style with Sphinx roles (``:class:`Checkout```, ``:meth:`x <repocache.RepoCache.x>```)
for readers of the source and of ``help()``. mkdocstrings renders Markdown, so each role becomes an optional
autorefs link to the object it names (resolved in the docstring's scope), shown as code; a role naming nothing
that resolves is shown as code.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(
    r":(?:class|meth|func|attr|mod|exc|data|obj|const):`(?P<tilde>~?)(?P<text>[^`<]+?)\s*(?:<(?P<target>[^>`]+)>)?`"
)


def _resolve(obj: griffe.Object, name: str) -> str | None:
    head, _, rest = name.partition(".")
    try:
        resolved = obj.resolve(head)
    except (griffe.NameResolutionError, ValueError):
        return name if name.startswith("repocache.") else None
    return f"{resolved}.{rest}" if rest else resolved


class SphinxRoles(griffe.Extension):
    """Rewrite ``:role:`target``` in every docstring into an optional cross-reference."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        docstring = obj.docstring
        if docstring is None or ":`" not in docstring.value:
            return

        def replace(match: re.Match[str]) -> str:
            text = match["text"].strip()
            name = (match["target"] or text).strip()
            shown = name.rsplit(".", 1)[-1] if match["tilde"] else text.lstrip("~")
            target = _resolve(obj, name)
            if target is None:
                return f"`{shown}`"
            return f'<autoref identifier="{target}" optional><code>{shown}</code></autoref>'

        docstring.value = _ROLE.sub(replace, docstring.value)
