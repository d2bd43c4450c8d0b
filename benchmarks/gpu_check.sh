#!/usr/bin/env bash
# The prepared GPU check (issue 29): on a machine with a CUDA device, in under 5 minutes, time one
# meta-iteration (a training step: every engine, second and first order), the Hessian probe and a
# whole checkpoint probe with --device cuda against their references, with the agreement of each,
# and write the table to $OUT/gpu_check.md and into docs/performance.md (between the gpu-check
# markers) of this checkout. Run it through the `device` tool when a session is lent a GPU:
#   bash benchmarks/gpu_check.sh            # OUT defaults to benchmarks/gpu-check
# Never a dependency of the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/gpu-check}"
PY="${PYTHON:-python}"
[ -x .venv/bin/python ] && PY="${PYTHON:-.venv/bin/python}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT"

"$PY" -c 'import sys, torch
if not torch.cuda.is_available():
    sys.exit("gpu_check: torch sees no CUDA device here; run this on the GPU machine (the device tool)")
print("gpu_check:", torch.cuda.get_device_name(0), "torch", torch.__version__)'
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$OUT/nvidia-smi.txt" 2>&1 || true

# --rounds 3 keeps the three rows inside ~4 minutes on an H100; `higher` is timed when installed.
timeout 290 "$PY" benchmarks/run.py --device cuda --rounds 3 --only meta --only hessian --only probe \
  | tee "$OUT/gpu_check.md"

"$PY" - "$OUT/gpu_check.md" <<'PYTHON'
import datetime, pathlib, sys
table = pathlib.Path(sys.argv[1]).read_text().strip()
docs = pathlib.Path("docs/performance.md")
begin, end = "<!-- gpu-check: begin -->", "<!-- gpu-check: end -->"
text = docs.read_text()
head, rest = text.split(begin, 1)
_, tail = rest.split(end, 1)
stamp = datetime.date.today().isoformat()
docs.write_text(f"{head}{begin}\nMeasured {stamp} by `bash benchmarks/gpu_check.sh`:\n\n{table}\n{end}{tail}")
PYTHON
cp docs/performance.md "$OUT/performance.md"
echo "gpu_check: table in $OUT/gpu_check.md and docs/performance.md"
