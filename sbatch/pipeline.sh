#!/usr/bin/env bash
# The whole Self-Verified Distillation chain as plain sbatch jobs with dependencies.
#
# Run as:  bash sbatch/pipeline.sh configs/X.yaml [key.sub=value ...]   # prepare the run, then submit it
#          bash sbatch/pipeline.sh RUN_DIR                               # submit scripts prepared (and edited) before
#
# `python -m svd_hpc.launch prepare --config X` writes the run directory and one script per stage,
# RUN_DIR/sbatch/<stage>.sh, rendered from the config and its cluster profile (partition, account,
# GPUs = tensor parallel size, setup lines, apptainer prefix, requeue on the warning signal): the
# scripts `python -m svd_hpc.launch` submits, without their dependency lines. Edit the lines marked
# "site:" if you need to; this script submits them in dependency order with --dependency on the
# command line. `python -m svd_hpc.launch status RUN_DIR` shows progress. Arrays are not split at
# MaxArraySize here (prepare refuses larger ones); `svd_hpc.launch` splits them and resumes runs.
set -euo pipefail
target=${1:?usage: bash sbatch/pipeline.sh CONFIG [key.sub=value ...] | RUN_DIR}
if [[ -d $target ]]; then
    RUN_DIR=$(cd "$target" && pwd)
else
    shift
    eval "$(python -m svd_hpc.launch prepare --config "$target" "$@")"  # sets RUN_DIR
fi

has() { [[ -f $RUN_DIR/sbatch/$1.sh ]]; }
submit() {  # submit STAGE [sbatch options...]: print the job id
    local stage=$1
    shift
    sbatch --parsable "$@" "$RUN_DIR/sbatch/$stage.sh" | cut -d';' -f1
}
after() { echo "--dependency=$1 --kill-on-invalid-dep=yes"; }

generate=$(submit generate)
verify=$(submit verify $(after "aftercorr:$generate"))
merge=$(submit merge $(after "afterok:$verify"))
report_after="afterok:$merge"
if has train; then
    train=$(submit train $(after "afterok:$merge"))
fi
if has eval_base; then
    eval_base=$(submit eval_base)
    report_after+=":$eval_base"
fi
if has eval_trained; then
    eval_trained=$(submit eval_trained $(after "afterok:$train"))
    report_after+=":$eval_trained"
fi
report=$(submit report $(after "$report_after"))
echo "submitted: generate $generate, verify $verify, merge $merge, train ${train:--}, eval_base ${eval_base:--}," \
    "eval_trained ${eval_trained:--}, report $report"
echo "follow with: python -m svd_hpc.launch status $RUN_DIR"
