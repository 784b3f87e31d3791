#!/usr/bin/env bash
# One device call's worth of GPU checks (docs/kernels.md, "Running it"), within the 10-minute limit of a call:
#   1. install the carried fla wheels (.whl/, git-excluded) into /tmp/site, for the published pipeline's rows;
#   2. scripts/gpu_check_kernels.py: bf16 / fp16 checks, the decode table, the layer table, the launch and
#      decode sweeps (stops starting cases after KERNELS_BUDGET_S seconds, then prints its tables);
#   3. scripts/gpu_check_model.py on the recipes in MODEL_RECIPES, for whatever is left of TOTAL_S.
# Reports and logs go to $OUT (the device tool's folder that comes back), runs/gpu otherwise.
#
#   run(carry=[".whl"], timeout_s=570, command="bash scripts/gpu_session.sh")
set -uo pipefail
cd "$(dirname "$0")/.."
TOTAL_S=${TOTAL_S:-550}
KERNELS_BUDGET_S=${KERNELS_BUDGET_S:-380}
MODEL_RECIPES=${MODEL_RECIPES:-liger-gla,lizard,lolcats}
OUT=${OUT:-runs/gpu}
mkdir -p "$OUT"
export OUT PYTHONUNBUFFERED=1
start=$SECONDS

if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
else
    echo "no fla wheels under .whl/: the published pipeline's rows will say so (docs/kernels.md, Running it)"
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true

python3 scripts/gpu_check_kernels.py --jobs 14 --budget-s "$KERNELS_BUDGET_S" \
    --sections checks,decode,layers,sweep,decode-sweep --variants hybrid,lizard,lolcats 2>&1 \
    | tee "$OUT/gpu_check_kernels.log"
kernels_rc=${PIPESTATUS[0]}

left=$((TOTAL_S - (SECONDS - start)))
model_rc=0
if [ "$left" -gt 60 ]; then
    timeout "$left" python3 scripts/gpu_check_model.py --recipes "$MODEL_RECIPES" 2>&1 \
        | tee "$OUT/gpu_check_model.log"
    model_rc=${PIPESTATUS[0]}
else
    echo "gpu_check_model.py skipped: ${left}s left of TOTAL_S=${TOTAL_S}"
fi
echo "gpu_session: kernels rc ${kernels_rc}, model rc ${model_rc}, $((SECONDS - start)) s"
exit $((kernels_rc || model_rc))
