#!/usr/bin/env bash
# docs/tabular.md: which teacher helps a small MLP on KEEL tables (../shared/data/tabular).
# Student mlp_small (64, 32), tabular recipe (Adam 1e-3, cosine, batch 256, $EPOCHS epochs),
# student seeds $SEEDS, one teacher per table (teacher seed 0) shared by every student:
#   ce        the student on the labels
#   kd_mlp, kd_hgb, kd_lightgbm   Hinton KD from mlp_large (256, 512, 256), hgb, lightgbm
#             (the boosting teachers with out-of-fold soft labels)
#   kd_leaky  KD from hgb with teacher.oof_folds=0 (training rows predicted by the model fitted
#             on them)
#   awmt      attention-weighted ensemble of [hgb, mlp_large]
#
#   scripts/tabular_teachers.sh OUT [letter magic penbased]   # then: hpmkd report OUT/<table>
# PARTS="ce kd_mlp" runs some of the parts only (default: all six). Parts may run at once, each
# in its own shell: a teacher they share is fitted by one of them while the others wait for it.
set -euo pipefail
out=${1:?usage: tabular_teachers.sh OUT [tables...]}
shift
tables=${*:-letter magic penbased}
epochs=${EPOCHS:-200}
seeds=${SEEDS:-0,1,2}
parts=${PARTS:-ce kd_mlp kd_hgb kd_lightgbm kd_leaky awmt}
hpmkd=${HPMKD:-hpmkd}
python -c "import sys; sys.path.insert(0, 'scripts'); from machine import cpu_name; print('cpu:', cpu_name())"
for data in $tables; do
  common=(
    "data=$data" student=mlp_small recipe=tabular "recipe.epochs=$epochs" "seed=$seeds"
    trainer.enable_progress_bar=false hydra/launcher=parallel "hydra.launcher.workers=${WORKERS:-2}"
  )
  for part in $parts; do
    case $part in
      ce) args=() ;;
      kd_mlp) args=(+strategy=kd teacher=mlp_large teacher.seed=0) ;;
      kd_hgb) args=(+strategy=kd teacher=hgb teacher.seed=0) ;;
      kd_lightgbm) args=(+strategy=kd teacher=lightgbm teacher.seed=0) ;;
      kd_leaky) args=(+strategy=kd teacher=hgb teacher.seed=0 teacher.oof_folds=0) ;;
      awmt) args=(+strategy=multi_teacher "teachers=[{arch: hgb, seed: 0},{arch: mlp_large, seed: 0}]") ;;
      *) echo "unknown part $part" >&2; exit 2 ;;
    esac
    $hpmkd train -m "${common[@]}" "${args[@]}" "hydra.sweep.dir=$out/$data/$part"
  done
done
