#!/usr/bin/env bash
# Run every benchmark; each writes benchmarks/results/<name>.json (JSON lines), atomically (temp file, then mv).
#   bash benchmarks/run_all.sh            (from the repo root; `make bench` does this)
#   PYTHON=/path/to/python bash benchmarks/run_all.sh
# cpc_step runs first: data_pipeline reads its windows/s from results/cpc_step.json. Budget: < 15 min on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
OUT=benchmarks/results
mkdir -p "$OUT"
start=$(date +%s)
for name in cpc_step data_pipeline transcribe feature_cache step_settings pretrain_e2e; do
    t0=$(date +%s)
    tmp="$OUT/.$name.json.$$.tmp"
    echo "== $name (load average: $(cut -d' ' -f1-3 /proc/loadavg))" >&2
    if "$PYTHON" "benchmarks/$name.py" > "$tmp"; then
        mv -f "$tmp" "$OUT/$name.json"
        cat "$OUT/$name.json"
    else
        status=$?
        rm -f "$tmp"
        echo "== $name failed (exit $status); $OUT/$name.json left as it was" >&2
        exit "$status"
    fi
    echo "== $name: $(( $(date +%s) - t0 )) s" >&2
done
total=$(( $(date +%s) - start ))
echo "== all benchmarks: $total s (budget 900 s; load average now: $(cut -d' ' -f1-3 /proc/loadavg))" >&2
if [ "$total" -gt 900 ]; then
    echo "== over the 15-minute budget" >&2
fi
