#!/usr/bin/env bash
# Batch norm under domain shift (EfficientNet-Lite0): the same short fine-tune with the
# trunk's batch-norm statistics updated (bn: train) or kept at ImageNet's (bn: frozen), then
# bench/cross_lab.sh on both. A small TRAIN subset keeps it to minutes on 2 cores.
# Usage: bash bench/bn_shift.sh [runs/results]   (LIMIT per class, default 250; EPOCHS, 3)
set -euo pipefail
OUT=${1:-runs/results}
LIMIT=${LIMIT:-250}
EPOCHS=${EPOCHS:-3}
CONFIG=${CONFIG:-configs/fast_efficientnet.yaml}
wbc=${WBC:-.venv/bin/wbc-ray}
runs=()
for bn in train frozen; do
  cfg=$(mktemp --suffix=.yaml)
  sed "s/^  bn: .*/  bn: $bn/" "$CONFIG" > "$cfg"
  name="bn-$bn-$(basename "$CONFIG" .yaml)-$LIMIT-$EPOCHS"
  /usr/bin/time -f "wall %e s" $wbc train --config "$cfg" --limit-per-class "$LIMIT" \
      --epochs "$EPOCHS" --output "$OUT" --name "$name"
  runs+=("$OUT/$name")
done
bash bench/cross_lab.sh "${runs[@]}"
