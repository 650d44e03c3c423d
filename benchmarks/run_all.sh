#!/usr/bin/env bash
# Every benchmark at its real (default) size, one after the other on an otherwise idle machine, then
# docs/benchmarks.md from their JSON (benchmarks/report.py calls each script's report). About 1.5 hours on
# 2 cores. benchmarks/scale.py (hours at full size) and step_cost.py's scoring runs (section 7) are run on
# their own: see their docstrings.
#   bash benchmarks/run_all.sh                      (from the repository root, after `make venv`)
#   bash benchmarks/run_all.sh peer_rag scaling     (only these; the report uses every JSON present)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=benchmarks/results
mkdir -p "$OUT" docs/benchmarks
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
ONLY=" $* "
run() {
  name=$1; shift
  if [ "$ONLY" != "  " ] && [[ "$ONLY" != *" $name "* ]]; then return 0; fi
  echo "== $name: $*"; "$PY" "$@" --out "$OUT/$name.json" > "$OUT/$name.log" 2>&1
}
run step_cost        benchmarks/step_cost.py
run peer_rag         benchmarks/peer_rag.py
run index_encoding   benchmarks/index_encoding.py --encode-repeats 3
run eval_throughput  benchmarks/eval_throughput.py
run profile_jsa      benchmarks/profile_jsa.py
run scaling          benchmarks/scaling.py --plots docs/benchmarks
"$PY" benchmarks/report.py --results "$OUT" --out docs/benchmarks.md
