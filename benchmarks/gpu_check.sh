#!/usr/bin/env bash
# The GPU check, in one run on a CUDA machine (<= 9 minutes on one H100), with the project's own environment
# (nothing installed): the GPU tests, then extraction end to end (fp32 and bf16, batch 1 and 16, with decode
# workers) and Oscar+ training (BERT-base, fp32 and bf16); every figure, the GPU's name and the torch/CUDA
# versions go to $OUT/gpu_report.json (each step's exit code and log beside it in $OUT/logs/).
#
#   bash benchmarks/gpu_check.sh              # on the GPU machine, from the repository root
#   bash benchmarks/gpu_check.sh --dry-run    # the same steps on the CPU at tiny sizes (CI runs this)
#
# OUT defaults to ./gpu_check_out; PYTHON to .venv/bin/python when there is one, else python3.
set -uo pipefail
cd "$(dirname "$0")/.."

DRY=0
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY=1 ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "error: gpu_check.sh: unknown argument $arg (expected --dry-run)" >&2; exit 2 ;;
  esac
done
OUT="${OUT:-gpu_check_out}"
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
mkdir -p "$OUT/logs" "$OUT/figures"
export PYTHONPATH="$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}"

if [ "$DRY" -eq 1 ]; then
  DEVICE=cpu
  # tiny sizes: the same steps, seconds each
  EXTRACT=(--preset tiny --images 2 --min-size 64 --max-size 96 --drift-images 1 --no-timeline)
  BATCHES=(1 2)
  WORKERS=0
  OSCAR=(--size tiny --batch-size 2 --warmup 1 --steps 1 --no-mfu)
  LIMIT=300
else
  DEVICE=cuda
  "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || {
    echo "error: gpu_check.sh: no CUDA device here (run with --dry-run on a CPU)" >&2; exit 2; }
  EXTRACT=(--images 256 --drift-images 8)
  BATCHES=(1 16)
  WORKERS=4
  OSCAR=()
  LIMIT=240
fi

# One step: its command under a time limit, its log, its exit code (a failed step does not stop the others).
STEPS=()
step() {
  local name="$1"; shift
  local t0=$SECONDS rc=0
  echo "+ [$name] $*" >&2
  timeout "$LIMIT" "$@" > "$OUT/logs/$name.log" 2>&1 || rc=$?
  echo "  [$name] exit $rc after $((SECONDS - t0)) s" >&2
  STEPS+=("$name:$rc:$((SECONDS - t0))")
}

step gpu_tests "$PYTHON" -m pytest tests/gpu -m gpu -x -q -p no:cacheprovider
for dtype in fp32 bf16; do
  for batch in "${BATCHES[@]}"; do
    step "extract_${dtype}_b${batch}" "$PYTHON" benchmarks/extract.py --device "$DEVICE" --dtype "$dtype" \
      --batch-size "$batch" --workers "$WORKERS" "${EXTRACT[@]}" --json "$OUT/figures/extract_${dtype}_b${batch}.json"
  done
done
step oscar_train "$PYTHON" benchmarks/oscar_train.py --device "$DEVICE" --dtypes fp32,bf16 "${OSCAR[@]}" \
  --json "$OUT/figures/oscar_train.json"

"$PYTHON" - "$OUT" "$DRY" "${STEPS[@]}" <<'EOF'
import json, platform, sys, time
from pathlib import Path

import torch

out, dry, steps = Path(sys.argv[1]), sys.argv[2] == "1", sys.argv[3:]
gpu = torch.cuda.is_available() and not dry
report = {
    "dry_run": dry,
    "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    "device": torch.cuda.get_device_name(0) if gpu else f"CPU ({platform.processor() or platform.machine()})",
    "torch": torch.__version__,
    "cuda": torch.version.cuda,
    "cudnn": torch.backends.cudnn.version() if gpu else None,
    "steps": {},
    "figures": {},
}
for s in steps:
    name, rc, seconds = s.rsplit(":", 2)
    report["steps"][name] = {"exit": int(rc), "seconds": int(seconds), "log": f"logs/{name}.log"}
for f in sorted((out / "figures").glob("*.json")):
    try:
        report["figures"][f.stem] = json.loads(f.read_text())
    except ValueError as e:
        report["figures"][f.stem] = {"error": f"unreadable: {e}"}
report["passed"] = all(v["exit"] == 0 for v in report["steps"].values())
tmp = out / "gpu_report.json.tmp"
tmp.write_text(json.dumps(report, indent=1) + "\n")
tmp.replace(out / "gpu_report.json")
print(f"{out / 'gpu_report.json'}: {'every step passed' if report['passed'] else 'FAILED: ' + ', '.join(k for k, v in report['steps'].items() if v['exit'])}")
sys.exit(0 if report["passed"] else 1)
EOF
