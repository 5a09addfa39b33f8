#!/usr/bin/env bash
# The README's generator table and experiments/results/generators/quality.json, end to end:
#
#   bash scripts/generator_quality.sh [RUNS]        # RUNS: where the training workdirs go (default runs/)
#
# Every step resumes: rerun after a kill and finished trainings are skipped, unfinished ones continue from
# their checkpoints. Test splits are never read: quality is measured on validation.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS="${1:-runs}"
DATASET="face_mask_detection/2classes"
OUT="experiments/results/generators"
BIN="${VAEAUG_BIN:-.venv/bin}"
mkdir -p "$RUNS" "$OUT"

# The fixed feature space and filter of every row: one cnn96 classifier on the real training images.
[ -f "$RUNS/det_cnn96/test_metrics.json" ] || "$BIN/vaeaug-train-classifier" --config=classifier \
  --workdir="$RUNS/det_cnn96" --config.model=cnn96 --config.image_size=64 --config.epochs=10 \
  --config.patience=4 --config.figures=False --config.progress=False

# The earlier table's generators (500 images per class, 10 epochs): the baseline rows.
for M in dae vae cvae; do
  [ -f "$RUNS/gen_$M/generator_metrics.json" ] || "$BIN/vaeaug-train-generator" --config=generator \
    --workdir="$RUNS/gen_$M" --config.model=$M --config.n_per_class=500 --config.epochs=10 --config.patience=4 \
    --config.kl_warmup_epochs=2 --config.progress=False --config.figures=False
done

# The plain VAE with the recipe that trains until early stopping (all training images, Gaussian likelihood):
# the same-protocol comparison for the pool-pretrained one.
[ -f "$RUNS/conv_vae/generator_metrics.json" ] || "$BIN/vaeaug-train-generator" --config=generator:converged \
  --workdir="$RUNS/conv_vae" --config.model=vae --config.progress=False --config.figures=False

# The residual VAE pretrained on the unlabeled face pool until early stopping (64 px, Gaussian likelihood).
[ -f "$RUNS/pool_rvae64/generator_metrics.json" ] || "$BIN/vaeaug-train-generator" --config=generator:pool \
  --workdir="$RUNS/pool_rvae64" --config.progress=False

evaluate() {  # GENERATOR SAMPLER [flags]
  "$BIN/vaeaug-evaluate-generator" --generator="$1" --sampler="$2" --dataset="$DATASET" \
    --classifier="$RUNS/det_cnn96" --per_class=300 --cas_epochs=8 --classifier_model=cnn96 \
    --quality_json="$OUT/quality.json" --figures_dir="$OUT" "${@:3}"
}
evaluate "$RUNS/gen_dae" denoise
evaluate "$RUNS/gen_dae" noise_blur                  # the blur matching that DAE, chosen on validation
evaluate "$RUNS/gen_vae" posterior_jitter
evaluate "$RUNS/gen_cvae" prior
evaluate "$RUNS/gen_cvae" counterfactual
evaluate "$RUNS/conv_vae" posterior_jitter
for S in posterior_jitter interpolation gmm counterfactual; do
  evaluate "$RUNS/pool_rvae64" "$S"
done
evaluate "$RUNS/pool_rvae64" posterior_jitter --temperature=1.5    # wider jitter: recall vs precision
evaluate "$RUNS/pool_rvae64" counterfactual --strength=1.5          # further along the class direction
