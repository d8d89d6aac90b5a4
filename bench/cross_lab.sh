#!/usr/bin/env bash
# Same-lab and cross-lab accuracy of trained runs, side by side:
#   Kaggle official TEST (new patients' cells, same lab) and the LISC crops (another lab,
#   other camera, stain and magnification; 4 classes, BASOPHIL left out by evaluate).
# Usage: bash bench/cross_lab.sh runs/results/<run> [runs/results/<run> ...]
# Writes <run>/eval-kaggle-test and <run>/eval-lisc, and prints one Markdown row per run.
set -euo pipefail
wbc=${WBC:-.venv/bin/wbc-ray}
DATA=${DATA:-../shared/data}
grep -o -w 'avx512_bf16\|amx_tile\|avx512f\|avx2' /proc/cpuinfo | sort -u | tr '\n' ' '
echo "($(nproc) cores)"
echo "| run | Kaggle TEST acc | macro F1 | LISC acc | macro F1 |"
echo "|---|---|---|---|---|"
for run in "$@"; do
  $wbc evaluate --checkpoint "$run" --data "$DATA/kaggle-blood-cells/images" \
      --split official --part test --output "$run/eval-kaggle-test" >/dev/null
  $wbc evaluate --checkpoint "$run" --data "$DATA/lisc-crops" --split all \
      --output "$run/eval-lisc" >/dev/null
  .venv/bin/python - "$run" <<'PY'
import json, sys
run = sys.argv[1]
k, l = (json.load(open(f"{run}/{d}/metrics.json")) for d in ("eval-kaggle-test", "eval-lisc"))
print(f"| {run.rstrip('/').rsplit('/', 1)[-1]} | {k['accuracy']:.4f} | {k['macro']['f1']:.4f} "
      f"| {l['accuracy']:.4f} | {l['macro']['f1']:.4f} |")
PY
done
