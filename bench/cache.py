"""Cache keys and cached models: one hashing scheme for every artifact and result.

A key is the SHA-256 of the canonical JSON of a config (component name, params, upstream keys,
profile, seed, component version). Models are stored as state dicts under
``$BENCH_HOME/artifacts/<key>/model.pt`` (written atomically, loaded with ``weights_only=True``)
beside ``config.json``, which says what produced them.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def config_key(config: dict[str, Any]) -> str:
    """The cache key of a config: stable across runs, machines and dict orderings."""
    return hashlib.sha256(canonical_json(config).encode()).hexdigest()[:24]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class Artifacts:
    """Models and files keyed by config hash under ``<home>/artifacts``."""

    def __init__(self, home: Path | str) -> None:
        self.root = Path(home) / "artifacts"

    def dir(self, key: str) -> Path:
        return self.root / key

    def load_model(self, key: str, model: nn.Module) -> bool:
        """Load the cached weights for ``key`` into ``model``; False if there are none usable."""
        path = self.dir(key) / "model.pt"
        if not path.exists():
            return False
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            model.load_state_dict(state)
        except Exception as exc:  # a damaged or stale checkpoint is recomputed, never trusted
            print(f"warning: cached model {path} unusable ({type(exc).__name__}); recomputing it",
                  file=sys.stderr)
            return False
        return True

    def save_model(self, key: str, model: nn.Module, config: dict[str, Any],
                   info: dict[str, Any] | None = None) -> None:
        import io

        buf = io.BytesIO()
        torch.save(model.state_dict(), buf)
        d = self.dir(key)
        atomic_write_bytes(d / "config.json", (json.dumps({"config": config, **(info or {})},
                                                          indent=2, default=str) + "\n").encode())
        atomic_write_bytes(d / "model.pt", buf.getvalue())

    def cached_model(
        self,
        config: dict[str, Any],
        build: Callable[[], nn.Module],
        train: Callable[[nn.Module], dict[str, Any] | None],
        *,
        force: bool = False,
    ) -> tuple[nn.Module, str, bool]:
        """The model for ``config``: loaded if cached, else built, trained and saved.

        Returns (model in eval mode, key, whether it was trained now).
        """
        key = config_key(config)
        model = build()
        if not force and self.load_model(key, model):
            model.eval()
            return model, key, False
        info = train(model) or {}
        model.eval()
        self.save_model(key, model, config, info)
        return model, key, True
