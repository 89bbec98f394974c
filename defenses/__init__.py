"""Built-in defenses: one module each, found through the ``bench.defenses`` entry points."""
