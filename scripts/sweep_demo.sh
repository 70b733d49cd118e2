#!/usr/bin/env bash
# A real multirun on a CPU, offline: sklearn's digits, MLP teacher (mlp_large, one teacher, seed 0)
# -> MLP students of mlp_small's family at 5, 10, 20 and 50x fewer parameters, trained plain,
# with Hinton KD and with TAKD (assistant: mlp), student seeds 0-2: 3 x 4 x 3 = 36 members, two at
# a time (hydra/launcher=parallel), then `hpmkd report` into docs/sweep_demo/.
#
# One member fails on purpose: kd at ratio 20 with seed 2 is given a teacher checkpoint that does
# not exist (the lookup `demo_broken` names that member alone; every other member resolves
# teacher.checkpoint to null and trains or reuses the stored teacher). It fails at run time,
# leaves failure.json, the other 35 finish, and the report lists it as failed.
#
# Run it again with the same output dir: complete members are skipped (skip_complete; the parallel
# launcher starts no process for them), only the broken member runs (and fails) again.
# `LAUNCHER= scripts/sweep_demo.sh` runs it with Hydra's basic launcher, in one process.
#
#   scripts/sweep_demo.sh [OUT]      # OUT: sweep and artifact store (default outputs/sweep_demo)
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-outputs/sweep_demo}
hpmkd=${HPMKD:-uv run --frozen hpmkd}
launcher=${LAUNCHER-hydra/launcher=parallel hydra.launcher.workers=2 hydra.launcher.threads_per_worker=1}
export OMP_NUM_THREADS=1

start=$(date +%s)
$hpmkd train -m data=digits recipe.epochs=20 teacher.seed=0 \
  +strategy=plain,kd,takd student.target_ratio=5,10,20,50 seed=0,1,2 \
  "teacher.checkpoint='\${oc.select:demo_broken.\${strategy.name}_r\${student.target_ratio}_s\${seed},null}'" \
  "+demo_broken={kd_r20_s2:'$out/no_such_teacher.pt'}" \
  "store.root=$out/store" "hydra.sweep.dir=$out/sweep" trainer.enable_progress_bar=false $launcher
echo "sweep: exit $? after $(($(date +%s) - start)) s (2: a member failed)"

$hpmkd report "$out/sweep" --out docs/sweep_demo --title "digits: MLP students of mlp_large"
