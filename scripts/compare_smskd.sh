#!/usr/bin/env bash
# SMSKD ablation on an offline KEEL table from ../shared/data/tabular (docs/smskd.md):
# MLP teacher (256, 512, 256; dropout 0.3) -> MLP student (64, 32), 68x fewer parameters,
# tabular recipe (Adam 1e-3, cosine, batch 256) shortened to $EPOCHS epochs, one teacher (seed 0)
# shared by every student, $SEEDS student seeds per configuration.
# Rows: CE only; each single method; their direct aggregation; SMSKD (FitNets, then KD from 62.5 %
# of training on: the paper's first-LR-decay transition, epoch 150 of 240) with each TCP weighting,
# and without the reference loss.
#
#   scripts/compare_smskd.sh letter      # then: hpmkd report outputs/compare_smskd/letter
set -uo pipefail
data=${1:?usage: compare_smskd.sh <letter|penbased|magic>}
epochs=${EPOCHS:-60}
seeds=${SEEDS:-0,1,2}
methods=${METHODS:-fitnet,kd}
transitions=${TRANSITIONS:-0.625}
out=${OUT:-outputs/compare_smskd/$data}
hpmkd=${HPMKD:-hpmkd}
common=(
  "data=$data" teacher=mlp_large teacher.seed=0 student=mlp_small
  "recipe.epochs=$epochs" "seed=$seeds" trainer.enable_progress_bar=false
)
stages=("strategy.methods=[$methods]" "strategy.transitions=[$transitions]")
# Each sweep goes on when one of its members fails; the failure is printed and the rest still run.
$hpmkd train -m "${common[@]}" "hydra.sweep.dir=$out/ce"
$hpmkd train -m "${common[@]}" +strategy=kd "method=$methods" "hydra.sweep.dir=$out/single"
$hpmkd train -m "${common[@]}" +strategy=aggregate "strategy.methods=[$methods]" \
  "hydra.sweep.dir=$out/aggregate"
$hpmkd train -m "${common[@]}" +strategy=smskd "${stages[@]}" \
  strategy.weight=teacher_tcp,none,one_minus_teacher_tcp,reference_tcp "hydra.sweep.dir=$out/smskd"
$hpmkd train -m "${common[@]}" +strategy=smskd "${stages[@]}" strategy.reference=false \
  "hydra.sweep.dir=$out/smskd_noref"
$hpmkd report "$out" --out "$out"
