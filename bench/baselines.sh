#!/usr/bin/env bash
# Baseline rows of docs/RESULTS.md on a CPU machine without ImageNet weights: the four
# torchvision baselines trained from scratch (not the paper's frozen-ImageNet recipe).
# Usage: bash bench/baselines.sh [runs/results]
#   MODELS (default "mobilenet_v2 resnet50 inception_v3 vgg16"), EPOCHS_LISC (default 40),
#   KAGGLE_MODELS (default "mobilenet_v2"), EPOCHS_KAGGLE (default 4)
set -euo pipefail
OUT=${1:-runs/results}
MODELS=${MODELS-mobilenet_v2 resnet50 inception_v3 vgg16}  # MODELS= runs none
KAGGLE_MODELS=${KAGGLE_MODELS-mobilenet_v2}
EPOCHS_LISC=${EPOCHS_LISC:-40}
EPOCHS_KAGGLE=${EPOCHS_KAGGLE:-4}
wbc=".venv/bin/wbc-ray"
mkdir -p "$OUT"
for model in $MODELS; do
  /usr/bin/time -f "wall %e s" $wbc train --config configs/baseline_scratch_lisc.yaml \
      --model "$model" --epochs "$EPOCHS_LISC" --output "$OUT" --name "$model-scratch-lisc-paper" \
      2>&1 | tee "$OUT/$model-scratch-lisc-paper.log"
done
for model in $KAGGLE_MODELS; do
  /usr/bin/time -f "wall %e s" $wbc train --config configs/baseline_scratch_kaggle.yaml \
      --model "$model" --epochs "$EPOCHS_KAGGLE" \
      --output "$OUT" --name "$model-scratch-kaggle-grouped" \
      2>&1 | tee "$OUT/$model-scratch-kaggle-grouped.log"
done
