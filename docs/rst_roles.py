"""Griffe extension for the docs build: Sphinx roles in docstrings -> Markdown code spans.

The docstrings of wsol use reST roles (``:class:`~wsol.metrics.BoxAccuracy```, ``:func:`write_split```).
Markdown would show the role name literally; this turns each into a code span of the name as Sphinx
displays it (``~`` keeps the last component). Loaded by mkdocs.yml (``extensions``), nothing else uses it.
"""

from __future__ import annotations

import re
from typing import Any

from griffe import Extension, Object

_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|attr|data|obj|exc|const):`(~?)([^`]+)`")


def _name(match: re.Match[str]) -> str:
    tilde, target = match.groups()
    return f"`{target.rsplit('.', 1)[-1] if tilde else target}`"


class RstRoles(Extension):
    def on_object(self, *, obj: Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _ROLE.sub(_name, obj.docstring.value)
