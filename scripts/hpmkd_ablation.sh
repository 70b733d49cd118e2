#!/usr/bin/env bash
# HPM-KD ablation and compression-ratio scan on an offline KEEL table (docs/hpmkd.md).
# Teacher: MLP (256, 512, 256; dropout 0.3) trained once (60 epochs, seed 0) and passed to every
# run as a checkpoint, so all rows share one teacher. Student: MLP (64, 32), 68x smaller on
# letter. Tabular recipe (Adam 1e-3, cosine, batch 256) at $EPOCHS epochs, $SEEDS student seeds.
# The runs share one store ($out/store): it holds the chain links and the run history ACM learns
# from: baselines, then four short KD probes that give ACM some configuration variety, then
# HPM-KD and its ablations in one sweep, whose members all read the history as it was when the
# sweep started (a snapshot in the sweep directory).
#
#   scripts/hpmkd_ablation.sh letter            # ablation
#   SCAN=1 SEEDS=0,1 scripts/hpmkd_ablation.sh letter   # compression-ratio scan: CE, KD, PDC, HPM-KD
# then, in outputs/hpmkd_ablation/letter (docs/hpmkd.md has the exact report commands):
#   hpmkd report ce kd takd hpmkd --out <dir>;  hpmkd report scan_* --out <dir>
# LAUNCHER=packed runs the packable sweeps (ce, kd, probes, probes_b; the scan's ce and kd) with
# hydra/launcher=packed: their members' student fits train as one model, with the same results.
# Each sweep's wall time is printed ("wall time <name>: <seconds> s") to compare the two.
# SWEEPS="ce kd probes probes_b" runs only the sweeps named (default: all of them).
set -uo pipefail
data=${1:?usage: hpmkd_ablation.sh <letter|penbased>}
epochs=${EPOCHS:-30}
seeds=${SEEDS:-0,1,2}
out=${OUT:-outputs/hpmkd_ablation/$data}
hpmkd=${HPMKD:-hpmkd}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # small MLPs: two threads on two cores run slower
packed=()
case ${LAUNCHER:-} in
  "") ;;
  packed) packed=(hydra/launcher=packed) ;;
  *) echo "hpmkd_ablation.sh: LAUNCHER must be empty or packed; got '$LAUNCHER'" >&2; exit 2 ;;
esac
teacher_dir=$out/teacher
[ -f "$teacher_dir/student.pt" ] || $hpmkd train "data=$data" student=mlp_large recipe.epochs=60 \
  seed=0 trainer.enable_progress_bar=false "store.root=$out/store" "hydra.run.dir=$teacher_dir"
common=(
  "data=$data" teacher=mlp_large "teacher.checkpoint=$teacher_dir/student.pt" student=mlp_small
  "recipe.epochs=$epochs" trainer.enable_progress_bar=false "store.root=$out/store"
)
sweep() {
  local name=$1 started=$SECONDS; shift
  [ -z "${SWEEPS:-}" ] || [[ " $SWEEPS " == *" $name "* ]] || return 0
  $hpmkd train -m "${common[@]}" "$@" "hydra.sweep.dir=$out/$name"
  echo "wall time $name: $((SECONDS - started)) s"
}
if [ -z "${SCAN:-}" ]; then
  sweep ce "seed=$seeds" "${packed[@]}"
  sweep kd "seed=$seeds" +strategy=kd "${packed[@]}"
  sweep takd "seed=$seeds" +strategy=takd assistant=mlp_small "assistant.params.hidden=[192,96]"
  sweep probes seed=100 +strategy=kd method.temperature=2,8 \
    "method.kd_weight=0.5" "method.ce_weight=0.5" "${packed[@]}"
  sweep probes_b seed=100 +strategy=kd method.temperature=2,8 "${packed[@]}"
  # HPM-KD and one row per component off, as ONE sweep: every member's ACM reads the same
  # snapshot of the history (strategy.acm.history=auto is frozen under -m), whatever order the
  # members run in; two members at a time, one thread each
  sweep hpmkd sweep=hpmkd_ablation "seed=$seeds" hydra/launcher=parallel \
    hydra.launcher.workers=2 hydra.launcher.threads_per_worker=1
else
  ratios=${RATIOS:-5,10,20,50}
  sweep scan_ce "seed=$seeds" "student.target_ratio=$ratios" "${packed[@]}"
  sweep scan_kd "seed=$seeds" +strategy=kd "student.target_ratio=$ratios" "${packed[@]}"
  sweep scan_pdc "seed=$seeds" +strategy=progressive "student.target_ratio=$ratios"
  sweep scan_hpmkd "seed=$seeds" +strategy=hpmkd "student.target_ratio=$ratios"
fi
