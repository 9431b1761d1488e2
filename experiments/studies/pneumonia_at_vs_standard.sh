#!/usr/bin/env bash
# Standard training vs PGD-AT (L-inf 8/255) on real PneumoniaMNIST, one model per seed and method, then the same
# robustness protocol for every best checkpoint (FGSM and PGD-20 on the whole test split, AutoAttack on 64 samples,
# at L-inf 1, 2, 4, 8/255), then the table. About 40 min on 2 idle CPU cores for 2 seeds.
#   MEDMNIST_ROOT=../shared/data/medmnist bash experiments/studies/pneumonia_at_vs_standard.sh [seeds...]
set -euo pipefail
configs="$(cd "$(dirname "$0")/../configs/adversarial" && pwd)"
seeds=("${@:-0 1}")
for seed in ${seeds[@]}; do
  for method in standard pgd_at; do
    medrobust fit --config "$configs/pneumonia_${method}.yaml" --seed_everything "$seed" --test_after_fit false \
      --trainer.logger.init_args.run_name "${method}_seed${seed}" --trainer.enable_progress_bar false
  done
done
for seed in ${seeds[@]}; do
  for method in standard pgd_at; do
    ckpt=$(python -m medrobust.experiments.studies.best_checkpoint pneumonia_adversarial "${method}_seed${seed}")
    medrobust test --config "$configs/pneumonia_${method}.yaml" --config "$configs/robust_eval_cpu.yaml" \
      --ckpt_path "$ckpt" --trainer.logger.init_args.experiment_name pneumonia_adversarial_eval \
      --trainer.logger.init_args.run_name "${method}_seed${seed}" --trainer.enable_progress_bar false
  done
done
python -m medrobust.experiments.studies.summarize pneumonia_adversarial_eval
