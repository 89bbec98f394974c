"""Cache keys and cached models: one hashing scheme for every artifact and result.

A key is the SHA-256 of the canonical JSON of a config (component name, params, upstream keys,
profile, seed, component version). Models are stored as state dicts under
``$BENCH_HOME/artifacts/<key>/model.pt`` (written atomically, loaded with ``weights_only=True``)
beside ``config.json``, which says what produced them.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench import BenchError


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def config_key(config: dict[str, Any]) -> str:
    """The cache key of a config: stable across runs, machines and dict orderings."""
    return hashlib.sha256(canonical_json(config).encode()).hexdigest()[:24]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """``data`` as ``path``, whole or not at all (a temporary file renamed); a full disk is a one-line
    BenchError naming the file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        _raise_if_full(exc, path)
        raise
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            _raise_if_full(exc, path)
        raise


def _raise_if_full(exc: OSError, path: Path) -> None:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        raise BenchError(f"cannot write {path}: {exc.strerror} (the disk is full); free space on it, or pass "
                         "another --home, and re-run: finished results and models are kept.") from None


#: beside ``model.pt``: the sha256 of its bytes, written when it is saved
DIGEST_FILE = "model.sha256"


class Artifacts:
    """Models and files keyed by config hash under ``<home>/artifacts``."""

    def __init__(self, home: Path | str) -> None:
        self.root = Path(home) / "artifacts"

    def dir(self, key: str) -> Path:
        return self.root / key

    def load_model(self, key: str, model: nn.Module) -> bool:
        """Load the cached weights for ``key`` into ``model``; False if there are none usable.

        ``model.pt`` is used only if its bytes match the digest written beside it (``model.sha256``) when
        it was saved: a damaged or edited file is recomputed, with a warning. A checkpoint saved before
        digests were kept gets its digest now (trusted on first use)."""
        path = self.dir(key) / "model.pt"
        if not path.exists():
            return False
        try:
            data = path.read_bytes()
            digest = hashlib.sha256(data).hexdigest()
            recorded = self.weights_digest(key)
            if recorded is not None and recorded != digest:
                raise ValueError("its bytes do not match the digest saved with it")
            state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
            model.load_state_dict(state)
            if recorded is None:
                atomic_write_bytes(path.with_name(DIGEST_FILE), digest.encode())
        except Exception as exc:  # a damaged or stale checkpoint is recomputed, never trusted
            print(f"warning: cached model {path} unusable ({type(exc).__name__}: {exc}); recomputing it",
                  file=sys.stderr)
            return False
        return True

    def weights_digest(self, key: str) -> str | None:
        """The sha256 of ``key``'s saved weights, as recorded when they were saved (None: none recorded)."""
        try:
            text = (self.dir(key) / DIGEST_FILE).read_text().strip()
        except OSError:
            return None
        return text if len(text) == 64 else None

    def read_info(self, key: str) -> dict[str, Any] | None:
        """``config.json`` of a cached model (None if missing or unreadable: the caller recomputes)."""
        try:
            info = json.loads((self.dir(key) / "config.json").read_text())
        except (OSError, ValueError):
            return None
        return info if isinstance(info, dict) else None

    def save_model(self, key: str, model: nn.Module, config: dict[str, Any],
                   info: dict[str, Any] | None = None) -> None:
        buf = io.BytesIO()
        torch.save(model.state_dict(), buf)
        data = buf.getvalue()
        d = self.dir(key)
        atomic_write_bytes(d / "config.json", (json.dumps({"config": config, **(info or {})},
                                                          indent=2, default=str) + "\n").encode())
        # the digest first: a crash between the two writes leaves a digest without weights (recomputed),
        # never weights that a stale digest would accept
        atomic_write_bytes(d / DIGEST_FILE, hashlib.sha256(data).hexdigest().encode())
        atomic_write_bytes(d / "model.pt", data)

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
