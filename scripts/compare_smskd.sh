#!/usr/bin/env bash
# SMSKD ablation on an offline KEEL table from ../shared/data/tabular (docs/smskd.md):
# MLP teacher (256, 512, 256; dropout 0.3) -> MLP student (64, 32), 68x fewer parameters,
# tabular recipe (Adam 1e-3, cosine, batch 256) shortened to $EPOCHS epochs, one teacher (seed 0)
# shared by every student, $SEEDS student seeds per configuration.
# Small models on a few cores: one thread per process (two threads on two cores run these MLPs
# several times slower). Rows: CE only; each single method; their direct aggregation; SMSKD (FitNets, then KD from 62.5 %
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
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
common=(
  "data=$data" teacher=mlp_large teacher.seed=0 student=mlp_small
  "recipe.epochs=$epochs" "seed=$seeds" trainer.enable_progress_bar=false
)
stages=("strategy.methods=[$methods]" "strategy.transitions=[$transitions]")
# one sweep; skipped when its directory already holds all its results (rerunning the script
# finishes what is missing). A failing member is printed and the others still run.
sweep() {
  local name=$1 members=$2; shift 2
  [ "$(find "$out/$name" -name results.json 2>/dev/null | wc -l)" -ge "$members" ] && return
  $hpmkd train -m "${common[@]}" "$@" "hydra.sweep.dir=$out/$name"
}
n=$(tr ',' '\n' <<<"$seeds" | wc -l)
sweep ce "$n"
sweep single $((2 * n)) +strategy=kd "method=$methods"
sweep aggregate "$n" +strategy=aggregate "strategy.methods=[$methods]"
sweep smskd $((4 * n)) +strategy=smskd "${stages[@]}" \
  strategy.weight=teacher_tcp,none,one_minus_teacher_tcp,reference_tcp
sweep smskd_noref "$n" +strategy=smskd "${stages[@]}" strategy.reference=false
$hpmkd report "$out" --out "$out"
