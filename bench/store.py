"""The results store: one SQLite row per cell (DESIGN section 8).

``$BENCH_HOME/results.sqlite`` (default ``./runs``). Each row holds the cell's config (JSON), metrics
(JSON), status (``done`` / ``failed``), error, timing and versions. Writes are single transactions in
WAL mode with a busy timeout, so two sweeps writing the same store do not corrupt it.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench import BenchError

SCHEMA = """
CREATE TABLE IF NOT EXISTS cells (
    key TEXT PRIMARY KEY,
    task TEXT NOT NULL,
    defense TEXT NOT NULL,
    attack TEXT NOT NULL,
    seed INTEGER NOT NULL,
    profile TEXT NOT NULL,
    budget REAL,
    status TEXT NOT NULL,
    error TEXT,
    config TEXT NOT NULL,
    metrics TEXT,
    versions TEXT,
    started REAL,
    finished REAL,
    wall_s REAL
);
CREATE TABLE IF NOT EXISTS calibrations (
    key TEXT PRIMARY KEY,
    task TEXT NOT NULL,
    defense TEXT NOT NULL,
    budget_db REAL NOT NULL,
    parameter TEXT NOT NULL,
    value REAL NOT NULL,
    achieved_db REAL,
    config TEXT NOT NULL,
    created REAL
);
"""

CELL_COLUMNS = ("key", "task", "defense", "attack", "seed", "profile", "budget", "status", "error",
                "config", "metrics", "versions", "started", "finished", "wall_s")


def default_home() -> Path:
    return Path(os.environ.get("BENCH_HOME", "runs"))


class Store:
    def __init__(self, home: Path | str | None = None) -> None:
        self.home = Path(home) if home is not None else default_home()
        try:
            self.home.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BenchError(f"cannot create the store folder {self.home}: {exc.strerror}; "
                             "pass a writable --home DIR.") from None
        self.path = self.home / "results.sqlite"
        with self._connect() as con:
            con.executescript(SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        try:
            con = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
        except sqlite3.Error as exc:
            raise BenchError(f"cannot open the results store {self.path}: {exc}") from None
        try:
            con.execute("PRAGMA busy_timeout = 60000")
            try:
                con.execute("PRAGMA journal_mode = WAL")
            except sqlite3.DatabaseError as exc:
                raise BenchError(f"{self.path} is not a results store ({exc}); "
                                 "point --home at another folder.") from None
            yield con
        finally:
            con.close()

    def _write(self, sql: str, args: tuple) -> None:
        delay = 0.05
        for attempt in range(20):
            try:
                with self._connect() as con:
                    con.execute("BEGIN IMMEDIATE")
                    con.execute(sql, args)
                    con.execute("COMMIT")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc) or attempt == 19:
                    raise
                time.sleep(delay)
                delay = min(1.0, delay * 2)

    def put_cell(self, row: dict[str, Any]) -> None:
        values = []
        for col in CELL_COLUMNS:
            v = row.get(col)
            if col in ("config", "metrics", "versions") and v is not None and not isinstance(v, str):
                v = json.dumps(v, sort_keys=True, default=str)
            values.append(v)
        marks = ",".join("?" for _ in CELL_COLUMNS)
        self._write(f"INSERT OR REPLACE INTO cells ({','.join(CELL_COLUMNS)}) VALUES ({marks})",
                    tuple(values))

    def get_cell(self, key: str) -> dict[str, Any] | None:
        with self._connect() as con:
            con.row_factory = sqlite3.Row
            r = con.execute("SELECT * FROM cells WHERE key = ?", (key,)).fetchone()
        return _decode(dict(r)) if r is not None else None

    def cells(self, status: str | None = None) -> list[dict[str, Any]]:
        with self._connect() as con:
            con.row_factory = sqlite3.Row
            if status is None:
                rows = con.execute("SELECT * FROM cells ORDER BY finished").fetchall()
            else:
                rows = con.execute("SELECT * FROM cells WHERE status = ? ORDER BY finished",
                                   (status,)).fetchall()
        return [_decode(dict(r)) for r in rows]

    def put_calibration(self, row: dict[str, Any]) -> None:
        cols = ("key", "task", "defense", "budget_db", "parameter", "value", "achieved_db", "config",
                "created")
        vals = tuple(json.dumps(row[c], sort_keys=True) if c == "config" else row.get(c) for c in cols)
        self._write(f"INSERT OR REPLACE INTO calibrations ({','.join(cols)}) VALUES "
                    f"({','.join('?' for _ in cols)})", vals)

    def get_calibration(self, key: str) -> dict[str, Any] | None:
        with self._connect() as con:
            con.row_factory = sqlite3.Row
            r = con.execute("SELECT * FROM calibrations WHERE key = ?", (key,)).fetchone()
        if r is None:
            return None
        d = dict(r)
        d["config"] = json.loads(d["config"])
        return d

    def dataframe(self) -> Any:
        """Every cell as a pandas DataFrame, one column per metric (``m_`` prefix avoided)."""
        import pandas as pd

        rows = []
        for r in self.cells():
            flat = {k: v for k, v in r.items() if k not in ("metrics", "config", "versions")}
            flat.update(r.get("metrics") or {})
            flat["config"] = r.get("config")
            rows.append(flat)
        return pd.DataFrame(rows)


def _decode(row: dict[str, Any]) -> dict[str, Any]:
    for col in ("config", "metrics", "versions"):
        if row.get(col):
            row[col] = json.loads(row[col])
    return row
