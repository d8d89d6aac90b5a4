#!/usr/bin/env bash
# Reproduce docs/RESULTS.md on a CPU machine, with fewer epochs than the paper's 150.
# Usage: bash bench/reproduce.sh [runs/results]
#   EPOCHS_KAGGLE (default 8), EPOCHS_LISC (default 60), SPLITS (default "grouped paper official")
set -euo pipefail
OUT=${1:-runs/results}
K=../shared/data/kaggle-blood-cells/images
EPOCHS_KAGGLE=${EPOCHS_KAGGLE:-8}
EPOCHS_LISC=${EPOCHS_LISC:-60}
SPLITS=${SPLITS:-grouped paper official}
wbc=".venv/bin/wbc-ray"
mkdir -p "$OUT"
for split in $SPLITS; do
  $wbc train --config configs/paper_kaggle.yaml --split "$split" --epochs "$EPOCHS_KAGGLE" \
      --output "$OUT" --name "paper_cnn-kaggle-$split" 2>&1 | tee "$OUT/paper_cnn-kaggle-$split.log"
done
for classes in paper lisc; do
  $wbc train --config configs/paper_lisc.yaml --classes "$classes" --epochs "$EPOCHS_LISC" \
      --output "$OUT" --name "paper_cnn-lisc-$classes" 2>&1 | tee "$OUT/paper_cnn-lisc-$classes.log"
done
for split in paper official grouped; do
  $wbc data audit --data $K --split "$split" --output "$OUT/audit-$split" \
      | tee "$OUT/audit-$split.log"
done
