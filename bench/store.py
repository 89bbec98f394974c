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
CREATE TABLE IF NOT EXISTS attempts (
    key TEXT NOT NULL,
    started REAL,
    finished REAL,
    error TEXT,
    detail TEXT,
    versions TEXT
);
"""

CELL_COLUMNS = ("key", "task", "defense", "attack", "seed", "profile", "budget", "status", "error",
                "config", "metrics", "versions", "started", "finished", "wall_s")


def schema_columns() -> dict[str, tuple[str, ...]]:
    """Each table of :data:`SCHEMA` and its columns, in order."""
    tables: dict[str, tuple[str, ...]] = {}
    for block in SCHEMA.split("CREATE TABLE IF NOT EXISTS ")[1:]:
        name, body = block.split("(", 1)
        body = body.rsplit(")", 1)[0]
        tables[name.strip()] = tuple(line.split()[0] for line in body.splitlines() if line.strip())
    return tables


def disk_trouble(exc: BaseException) -> bool:
    """SQLite could not write for want of space or a working disk (SQLITE_FULL, SQLITE_IOERR)."""
    text = str(exc).lower()
    return "disk is full" in text or "disk i/o error" in text or "no space left" in text


def default_home() -> Path:
    return Path(os.environ.get("BENCH_HOME", "runs"))


class Store:
    """The results of one home. ``readonly`` opens an existing store without writing to it (reports:
    a store on a read-only disk, or someone else's, can still be reported)."""

    def __init__(self, home: Path | str | None = None, *, readonly: bool = False) -> None:
        self.home = Path(home) if home is not None else default_home()
        self.path = self.home / "results.sqlite"
        self.readonly = readonly
        if readonly:
            if not self.path.exists():
                raise BenchError(f"no results store at {self.path}; run bench run or bench sweep with "
                                 f"--home {self.home} first.")
        else:
            try:
                self.home.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise BenchError(f"cannot create the store folder {self.home}: {exc.strerror}; "
                                 "pass a writable --home DIR.") from None
        if self._lost():
            raise BenchError(f"{self.path} is empty (0 bytes): its results were lost. {self._recovery()}")
        if not readonly:
            with self._connect() as con:
                con.executescript(SCHEMA)
        self._check_schema()

    def _check_schema(self) -> None:
        """A one-line error when a table of the store lacks columns this version reads or writes (a store
        made by another version, or edited): found on opening, not as a KeyError after a cell has run. A
        read-only store may lack whole tables other than ``cells`` (older stores had no ``attempts``)."""
        with self._connect() as con:
            found = {name: {row[1] for row in con.execute(f"PRAGMA table_info({name})").fetchall()}
                     for name in schema_columns()}
        for name, columns in schema_columns().items():
            if not found[name] and (self.readonly and name != "cells"):
                continue
            missing = [c for c in columns if c not in found[name]]
            if missing:
                what = (f"has no table '{name}'" if not found[name] else
                        f"lacks the column{'s' if len(missing) > 1 else ''} {', '.join(missing)} of table '{name}'")
                raise BenchError(f"the results store {self.path} {what}: it was made by another version of bench "
                                 f"or edited. {self._recovery()}")

    def _lost(self) -> bool:
        """A 0-byte file that stays so: a store another process is creating this instant is 0 bytes for a
        few milliseconds, one whose content was lost stays 0 bytes."""
        for _ in range(30):
            try:
                if self.path.stat().st_size > 0:
                    return False
            except FileNotFoundError:
                return False
            time.sleep(0.1)
        return True

    def _recovery(self) -> str:
        return (f"Move it aside (mv {self.path} {self.path}.damaged) and re-run: the trained models under "
                f"{self.home / 'artifacts'} are kept and reused, so only the cells' scores are recomputed.")

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        try:
            if self.readonly:
                # on a read-only disk SQLite cannot make the WAL index: then read the file as it is
                mode = "ro&immutable=1" if not os.access(self.home, os.W_OK) else "ro"
                con = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode={mode}", uri=True, timeout=60.0,
                                      isolation_level=None)
            else:
                con = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
        except sqlite3.Error as exc:
            raise BenchError(f"cannot open the results store {self.path}: {exc}") from None
        try:
            con.execute("PRAGMA busy_timeout = 60000")
            if not self.readonly:
                try:
                    con.execute("PRAGMA journal_mode = WAL")
                except sqlite3.OperationalError as exc:
                    if "readonly" in str(exc) or "read-only" in str(exc):
                        raise BenchError(f"the results store {self.path} is read-only ({exc}); run on a "
                                         "writable --home (bench report reads read-only stores).") from None
                    if disk_trouble(exc):
                        raise self._disk_error(exc) from None
                    raise
                except sqlite3.DatabaseError as exc:
                    raise BenchError(f"{self.path} is not a results store ({exc}). {self._recovery()}") from None
            try:
                yield con
            except sqlite3.DatabaseError as exc:
                text = str(exc)
                if isinstance(exc, sqlite3.OperationalError) and ("locked" in text or "busy" in text):
                    raise
                if "readonly" in text or "read-only" in text:
                    raise BenchError(f"the results store {self.path} is read-only ({text}); run on a writable "
                                     "--home (bench report reads read-only stores).") from None
                if disk_trouble(exc):
                    raise self._disk_error(exc) from None
                raise BenchError(f"the results store {self.path} is damaged ({text}). {self._recovery()}") from None
        finally:
            con.close()

    def _disk_error(self, exc: BaseException) -> BenchError:
        return BenchError(f"writing the results store {self.path} failed ({' '.join(str(exc).split())}): the disk may "
                          "be full (or failing); free space on it, or pass another --home, and re-run: the finished "
                          "results are kept (the failed write was not applied) and a re-run continues from them.")

    def check(self) -> None:
        """A one-line error, with recovery advice, if SQLite finds the store damaged."""
        with self._connect() as con:
            problems = [str(r[0]) for r in con.execute("PRAGMA quick_check").fetchall()]
        if problems != ["ok"]:
            first = next((p for p in problems if not p.startswith("***")), problems[0]).splitlines()[0]
            raise BenchError(f"the results store {self.path} is damaged ({first}). {self._recovery()}")

    def _transaction(self, work: Any) -> Any:
        """``work(connection)`` in one immediate transaction, retried while another writer holds the lock."""
        delay = 0.05
        for attempt in range(20):
            try:
                with self._connect() as con:
                    con.execute("BEGIN IMMEDIATE")
                    result = work(con)
                    con.execute("COMMIT")
                return result
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc) or attempt == 19:
                    raise
                time.sleep(delay)
                delay = min(1.0, delay * 2)
        return None

    def _write(self, sql: str, args: tuple) -> None:
        self._transaction(lambda con: con.execute(sql, args))

    def put_cell(self, row: dict[str, Any]) -> None:
        marks = ",".join("?" for _ in CELL_COLUMNS)
        self._write(f"INSERT OR REPLACE INTO cells ({','.join(CELL_COLUMNS)}) VALUES ({marks})", _cell_values(row))

    def put_failure(self, row: dict[str, Any], detail: str | None = None) -> bool:
        """Record a failed attempt at a cell (always kept, in ``attempts``) and make ``row`` the cell's row
        unless the cell is already ``done``: a failed re-run never replaces a finished result. Returns
        whether the row was written."""
        versions = row.get("versions")
        attempt = (row["key"], row.get("started"), row.get("finished"), row.get("error"), detail,
                   json.dumps(versions, sort_keys=True, default=str) if versions is not None else None)
        marks = ",".join("?" for _ in CELL_COLUMNS)
        updates = ",".join(f"{c}=excluded.{c}" for c in CELL_COLUMNS if c != "key")

        def work(con: sqlite3.Connection) -> bool:
            con.execute("INSERT INTO attempts (key, started, finished, error, detail, versions) VALUES (?,?,?,?,?,?)",
                        attempt)
            cur = con.execute(f"INSERT INTO cells ({','.join(CELL_COLUMNS)}) VALUES ({marks}) ON CONFLICT(key) DO "
                              f"UPDATE SET {updates} WHERE cells.status != 'done'", _cell_values(row))
            return cur.rowcount > 0

        return bool(self._transaction(work))

    def attempts(self, key: str | None = None) -> list[dict[str, Any]]:
        """Failed attempts (every one, also those at cells that are done now), oldest first."""
        with self._connect() as con:
            con.row_factory = sqlite3.Row
            try:
                if key is None:
                    rows = con.execute("SELECT * FROM attempts ORDER BY started").fetchall()
                else:
                    rows = con.execute("SELECT * FROM attempts WHERE key = ? ORDER BY started", (key,)).fetchall()
            except sqlite3.OperationalError:  # a store from before attempts were kept (read-only)
                return []
        return [_decode(dict(r)) for r in rows]

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
            # the plugins' code digests (bench.row): cells of one configuration from other code are not seeds
            # of one experiment (reports.cells.mixed_code)
            code = (r.get("versions") or {}).get("code")
            flat["code"] = json.dumps(code, sort_keys=True) if code else None
            rows.append(flat)
        return pd.DataFrame(rows)


def _cell_values(row: dict[str, Any]) -> tuple:
    """A row's values in ``CELL_COLUMNS`` order, JSON columns encoded."""
    values = []
    for col in CELL_COLUMNS:
        v = row.get(col)
        if col in ("config", "metrics", "versions") and v is not None and not isinstance(v, str):
            v = json.dumps(v, sort_keys=True, default=str)
        values.append(v)
    return tuple(values)


def _decode(row: dict[str, Any]) -> dict[str, Any]:
    for col in ("config", "metrics", "versions"):
        if row.get(col):
            row[col] = json.loads(row[col])
    return row
