"""Built-in attacks: one module each, found through the ``bench.attacks`` entry points."""
