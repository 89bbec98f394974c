"""The undefended teacher: the reference for every drop."""

from __future__ import annotations

from bench.api import Defense


class NoDefense(Defense):
    """Serves the teacher as it is: answers and exposed features untouched."""
