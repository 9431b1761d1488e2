#!/usr/bin/env bash
# Standard training vs PGD-AT (L-inf 8/255) on real PneumoniaMNIST, 2 seeds each, each run ending with the robustness
# report (FGSM, PGD-20 and AutoAttack at L-inf 1, 2, 4, 8/255). About an hour on 2 CPU cores.
#   MEDMNIST_ROOT=../shared/data/medmnist bash experiments/studies/pneumonia_at_vs_standard.sh [seeds...]
set -euo pipefail
here="$(cd "$(dirname "$0")/../configs/adversarial" && pwd)"
seeds=("${@:-0 1}")
for seed in ${seeds[@]}; do
  for method in standard pgd_at; do
    medrobust fit --config "$here/pneumonia_${method}.yaml" --seed_everything "$seed" \
      --trainer.logger.init_args.run_name "${method}_seed${seed}" --trainer.enable_progress_bar false
  done
done
python -m experiments.studies.summarize pneumonia_adversarial
