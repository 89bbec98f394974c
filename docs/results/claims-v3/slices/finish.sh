#!/bin/bash
# usage: docs/results/claims-v3/slices/finish.sh: once every task is whole in the slices, write the claims v3 report
# (docs/results/claims-v3/) and verdict (its verdict.md and README.md's generated section) from the committed files
# alone: claims-baselines' cells plus every numbered slice (never superseded/). Needs no store.
# claims-baselines' underwater rows (from before cells.csv recorded code, another teacher) give way key by key to
# slice 9's, which re-ran them all; a slice missing one of them would stop it with "two different teachers".
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
export LC_ALL=C  # the slices in the order tests/test_verdict_command.py reads them (sorted by name)
cells=(--cells docs/results/claims-baselines/cells.csv)
for f in docs/results/claims-v3/slices/[0-9]*.csv; do cells+=(--cells "$f"); done
.venv/bin/bench report --grid grids/claims-v3.yaml "${cells[@]}" --out docs/results/claims-v3
.venv/bin/bench verdict --grid grids/claims-v3.yaml "${cells[@]}" --readme README.md --out docs/results/claims-v3/verdict.md
