"""antidistill-bench: compare defenses against distillation attacks on image restoration models.

The core (this package) never imports a plugin by name: defenses, attacks and tasks are found through
the registries in :mod:`bench.registry`.
"""

__version__ = "0.1.0"


class BenchError(Exception):
    """A user-facing error: the CLI prints its message as one line and exits non-zero.

    Messages say what is wrong and what to do about it, without a traceback.
    """
