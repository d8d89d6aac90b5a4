#!/usr/bin/env bash
# Reproduce docs/RESULTS.md on a CPU machine (epochs reduced: see EPOCHS_* below).
# Usage: bash bench/reproduce.sh [runs/results]   (takes hours on 2 cores)
set -euo pipefail
OUT=${1:-runs/results}
K=../shared/data/kaggle-blood-cells/images
EPOCHS_KAGGLE=${EPOCHS_KAGGLE:-8}
EPOCHS_LISC=${EPOCHS_LISC:-60}
wbc=".venv/bin/wbc-ray"
for split in grouped paper official; do
  $wbc train --config configs/paper_kaggle.yaml --split $split \
      --epochs $EPOCHS_KAGGLE --output $OUT --name paper_cnn-kaggle-$split 2>&1 \
      | tee $OUT/paper_cnn-kaggle-$split.log
done
for classes in paper lisc; do
  $wbc train --config configs/paper_lisc.yaml --classes $classes --epochs $EPOCHS_LISC \
      --output $OUT --name paper_cnn-lisc-$classes 2>&1 | tee $OUT/paper_cnn-lisc-$classes.log
done
$wbc data audit --data $K --split paper --output $OUT/audit-paper | tee $OUT/audit-paper.log
$wbc data audit --data $K --split official --output $OUT/audit-official | tee $OUT/audit-official.log
$wbc data audit --data $K --split grouped --output $OUT/audit-grouped | tee $OUT/audit-grouped.log
