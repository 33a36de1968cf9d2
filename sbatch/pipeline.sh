#!/usr/bin/env bash
# The whole Self-Verified Distillation chain as plain sbatch arrays with dependencies.
#
# Run as:  bash sbatch/pipeline.sh configs/X.yaml [key.sub=value ...]
#          SVD_NO_GPU=1 bash sbatch/pipeline.sh ...   # CPU-only clusters: drop the GPU requests
#          SVD_SBATCH_SED='s/--time=.*/--time=01:00:00/' bash sbatch/pipeline.sh ...  # edit every template on the fly
#
# It prepares the run directory (config, plan, seed shards) with svd_hpc.launch, then submits
# the templates next to this file; each task runs `python -m svd_hpc.task STAGE --run-dir DIR`,
# the same stage bodies `python -m svd_hpc.launch` submits. `launch status RUN_DIR` shows
# progress from the done markers. Arrays here are not split at MaxArraySize: use svd_hpc.launch
# for more shards than your site's MaxArraySize allows.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
config=${1:?usage: bash sbatch/pipeline.sh CONFIG [key.sub=value ...]}
shift

# RUN_DIR, SHARDS, EVAL_BASE_TASKS, EVAL_TRAINED_TASKS, TRAIN
eval "$(python -m svd_hpc.launch prepare --config "$config" "$@")"

submit() {  # submit STAGE TEMPLATE [sbatch options...]: print the job id
    local stage=$1 template=$2
    shift 2
    mkdir -p "$RUN_DIR/logs/$stage"
    local script=${SVD_SBATCH_SED:-}
    [[ ${SVD_NO_GPU:-0} == 1 ]] && script="/--gpus-per-node/d;$script"
    local filter=(sed "$script")
    # the log names `launch status` looks for: JOB_INDEX_0_log.err for array tasks, JOB_0_log.err else
    local name="%j_0_log"
    [[ " $* " == *" --array="* ]] && name="%A_%a_0_log"
    "${filter[@]}" "$here/$template" | sbatch --parsable --output="$RUN_DIR/logs/$stage/$name.out" \
        --error="$RUN_DIR/logs/$stage/$name.err" "$@" /dev/stdin "$RUN_DIR" | cut -d';' -f1
}
after() { echo "--dependency=$1 --kill-on-invalid-dep=yes"; }

generate=$(submit generate generate.sbatch --array="0-$((SHARDS - 1))")
verify=$(submit verify verify.sbatch --array="0-$((SHARDS - 1))" $(after "aftercorr:$generate"))
merge=$(submit merge merge.sbatch $(after "afterok:$verify"))
report_after="afterok:$merge"
if (( EVAL_BASE_TASKS > 0 )); then
    eval_base=$(submit eval_base eval.sbatch --array="0-$((EVAL_BASE_TASKS - 1))" --export=ALL,STAGE=eval_base)
    report_after+=":$eval_base"
fi
if [[ $TRAIN == 1 ]]; then
    train=$(submit train train.sbatch $(after "afterok:$merge"))
    report_after+=":$train"
    if (( EVAL_TRAINED_TASKS > 0 )); then
        eval_trained=$(submit eval_trained eval.sbatch --array="0-$((EVAL_TRAINED_TASKS - 1))" \
            --export=ALL,STAGE=eval_trained $(after "afterok:$train"))
        report_after+=":$eval_trained"
    fi
fi
report=$(submit report report.sbatch $(after "$report_after"))
echo "submitted: generate $generate, verify $verify, merge $merge, train ${train:--}, report $report"
echo "follow with: python -m svd_hpc.launch status $RUN_DIR"
