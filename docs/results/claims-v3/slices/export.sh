#!/bin/bash
# usage: docs/results/claims-v3/slices/export.sh N [TASK]: write docs/results/claims-v3/slices/N.csv from the store's done rows that no other
# committed file (claims-baselines, other slices) holds; TASK keeps one task only.
# The store is runs/claims-v3 (ignored); a store that did not survive a session exports nothing new.
# Prints the row count per (task, defense, attack) and the teacher PSNR per teacher seed, to check the slice pairs with the rest.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
N=$1; TASK=${2:-}
rm -rf /tmp/slice-$N
.venv/bin/bench report --home runs/claims-v3 --grid grids/claims-v3.yaml --format csv --out /tmp/slice-$N > /tmp/slice-$N.log 2>&1 \
  || { tail -n 1 /tmp/slice-$N.log; exit 1; }
.venv/bin/python - "$N" "$TASK" <<'PY'
import csv, glob, sys
from collections import Counter

from bench.scheduler import committed_rows  # the rows `bench sweep --skip-done` would skip, by the same rule

n, task = sys.argv[1], sys.argv[2]
csv.field_size_limit(10**9)
others = ["docs/results/claims-baselines/cells.csv"] + [f for f in glob.glob("docs/results/claims-v3/slices/[0-9]*.csv")
                                                        if not f.endswith(f"/{n}.csv")]
seen = set(committed_rows(others))
with open(f"/tmp/slice-{n}/cells.csv", newline="") as fh:
    rd = csv.DictReader(fh)
    rows = [r for r in rd if r["status"] == "done" and r["key"] not in seen and (not task or r["task"] == task)]
    fields = rd.fieldnames
with open(f"docs/results/claims-v3/slices/{n}.csv", "w", newline="") as fh:
    w = csv.DictWriter(fh, fieldnames=fields)
    w.writeheader(); w.writerows(rows)
print(len(rows), "rows;", dict(Counter((r["task"], r["defense"], r["attack_label"]) for r in rows)))
t = {}
for r in rows:
    t.setdefault(r["teacher_seed"], set()).add(r["teacher_psnr"])
print("teacher psnr by seed:", t)
PY
