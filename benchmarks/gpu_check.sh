#!/usr/bin/env bash
# The GPU check: the real-tiny profile with every stage on the GPU (configs/profiles/cuda.yaml),
# `recap generate --device cuda`, and the embed benchmark with --device cuda; fails unless each
# used the GPU. Run it from the project's environment (after `make setup`: source .venv/bin/activate):
#
#   benchmarks/gpu_check.sh [WORKDIR]     # WORKDIR: where the scratch project goes (default: a temp dir)
#
# Proof of use, per part: each stage logs "<its device key>: cuda; ..." when it resolves the
# GPU (recaption.devices), the stages that train or sample record the device in their lineage
# or report (`compute.device`), and the embed benchmark reports torch.cuda.max_memory_allocated.
# Results and the command line go to reports/benchmarks.md ("GPU check").
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
if ! python -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu_check: torch.cuda.is_available() is false: no GPU here, nothing was checked" >&2
    exit 2
fi
WORK=${1:-$(mktemp -d -t recap-gpu-check-XXXXXX)}
REPO=$WORK/repo
mkdir -p "$REPO"
export DVC_NO_ANALYTICS=1 HF_HUB_OFFLINE=1

# A scratch copy of the project, as tests/tiny_repo.py makes one, on the real-tiny profile.
cp "$ROOT"/{dvc.yaml,params.yaml,.gitignore,.dvcignore} "$REPO"/
cp -r "$ROOT"/src "$ROOT"/configs "$REPO"/
cd "$REPO"
git init -q && dvc init -q && dvc config core.analytics false
python "$ROOT/tests/real_tiny.py" . >/dev/null
recap apply-profile configs/profiles/real-tiny.yaml configs/profiles/cuda.yaml
start=$(date +%s)
dvc repro 2>&1 | tee "$WORK/repro.log"
echo "gpu_check: dvc repro took $(($(date +%s) - start)) s"
recap generate "a red ball on a beach" --steps 2 --device cuda --out "$WORK/drawn.png" \
    2>&1 | tee "$WORK/generate.log"

python - "$WORK" <<'PY'
import json
import re
import sys
from pathlib import Path

work = Path(sys.argv[1])
log = (work / "repro.log").read_text() + (work / "generate.log").read_text()
# Every device key that the real-tiny profile resolves (the oracle and the evaluation CLIP's
# training are skipped on a real source, so theirs never are).
keys = ["clip.train.device", "embed.device", "captioner.pretrain.device",
        "captioner.stage1.device", "captioner.stage2.device", "recaption.device",
        "upsample.device", "autoencoder.device", "generator.device", "evaluate.device",
        "--device"]
missing = [k for k in keys if not re.search(rf"{re.escape(k)}: cuda;", log)]
# The stages that trained or sampled here record where (`compute` in a lineage or report).
records = ["models/captioner/pretrain/lineage.json", "models/captioner/stage1/lineage.json",
           "models/captioner/stage2/lineage.json", "models/generator/lineage.json",
           "reports/recaption.json", "reports/metrics.json"]
wrong = {}
for path in records:
    device = json.loads((work / "repo" / path).read_text())["compute"]["device"]
    if device != "cuda":
        wrong[path] = device
if missing or wrong:
    sys.exit(f"gpu_check: FAILED: no 'cuda' log line for {missing}; records not on cuda: {wrong}")
print("gpu_check: every stage resolved cuda and every compute record says cuda")
PY

cd "$ROOT"
python benchmarks/embed.py --images 2000 --compare 500 --device cuda | tee "$WORK/embed.json"
python - "$WORK/embed.json" <<'PY'
import json
import sys

result = json.loads(open(sys.argv[1]).read())
if not result.get("cuda_peak_allocated_mib", 0) > 0:
    sys.exit(f"gpu_check: FAILED: the embed benchmark allocated no GPU memory: {result}")
print(f"gpu_check: embed benchmark on cuda, {result['cuda_peak_allocated_mib']} MiB peak")
PY
echo "gpu_check: passed (outputs in $WORK)"
