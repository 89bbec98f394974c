#!/bin/bash
# The GPU checks of issue 16, as one script for a GPU machine (writes under $OUT; ~6 min on one H200):
# the CUDA tests, ASVP's served-forward overhead, GPU utilisation with 1, 2 and 4 jobs per GPU, and one
# paper-profile derain cell (ASVP, vanilla KD; steps cut to fit the lease: steps/s is what it reports).
#   OUT=/tmp/gpu bash docs/results/gpu/run.sh
set -u
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
L=$OUT/gpu.log
{ date -u; nvidia-smi -L; python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"; } > "$L" 2>&1
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . >> "$L" 2>&1 || echo "pip install failed" >> "$L"

timeout 90 python3 -m pytest -q -p no:cacheprovider tests/test_device.py > "$OUT/tests.txt" 2>&1
echo "cuda tests rc=$?" >> "$L"

timeout 45 python3 docs/results/gpu/overhead.py > "$OUT/overhead.jsonl" 2>> "$L"
echo "overhead rc=$?" >> "$L"

for k in 1 2 4; do
  nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader,nounits -lms 200 > "/tmp/util$k.txt" 2>/dev/null &
  P=$!
  s=$(date +%s.%N)
  timeout 35 bench sweep --tasks derain --defenses none,asvp --seeds 0-3 --device cuda --jobs-per-gpu $k \
    --set profile.teacher_steps=300 --set profile.student_steps=200 --home "/tmp/u$k" > "/tmp/sweep$k.log" 2>&1
  rc=$?
  e=$(date +%s.%N)
  kill $P 2>/dev/null
  python3 - "$k" "$s" "$e" "$rc" >> "$OUT/util.txt" <<'PY'
import sys
k, s, e, rc = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
vals = [float(v) for v in open(f"/tmp/util{k}.txt") if v.strip().replace(".", "").isdigit()]
busy = [v for v in vals if v > 0]
print(f"jobs_per_gpu={k} wall_s={e - s:.1f} rc={rc} util_mean={sum(vals) / max(1, len(vals)):.1f} "
      f"util_mean_when_busy={sum(busy) / max(1, len(busy)):.1f} samples={len(vals)}")
PY
  tail -n 3 "/tmp/sweep$k.log" >> "$L"
done

timeout 100 bench run --task derain --defense asvp --profile paper --device cuda --home /tmp/paper \
  --set profile.teacher_steps=2000 --set profile.student_steps=1000 > "$OUT/paper.txt" 2>&1
echo "paper cell rc=$?" >> "$L"
python3 - >> "$OUT/paper.txt" 2>&1 <<'PY'
from bench.store import Store
for r in Store("/tmp/paper").cells():
    m = r["metrics"] or {}
    t = {k: round(v, 1) for k, v in m.items() if k.endswith("_s")}
    print(r["status"], r["config"]["numerics"], t)
    if "teacher_s" in t:
        print(f"teacher steps/s {2000 / max(t['teacher_s'], 1e-9):.1f}; student steps/s (attacked) "
              f"{1000 / max(t['student_s'], 1e-9):.1f}; reference {1000 / max(t['reference_student_s'], 1e-9):.1f}")
    print({k: m.get(k) for k in ("teacher_psnr", "served_psnr", "student_psnr", "student_ref_psnr", "teacher_drop_db",
                                  "student_drop_db")})
PY
date -u >> "$L"
