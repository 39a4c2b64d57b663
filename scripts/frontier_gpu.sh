#!/usr/bin/env bash
# `make frontier` and the merged-vs-trained validation of each correction on one GPU machine, within a deadline:
#   scripts/frontier_gpu.sh OUT_DIR [SECONDS]     (MERGEMIX_HOME holds the cache; results and logs go to OUT_DIR)
# Jobs share the artifact cache, so a second call resumes what the deadline cut.
set -uo pipefail
out=$1; budget=${2:-480}; end=$(( $(date +%s) + budget )); mkdir -p "$out"
left() { local s=$(( end - $(date +%s) )); echo $(( s > 1 ? s : 1 )); }  # never 0: `timeout 0` waits forever
G="trainer=gpu model=tiny logger=none trainer.enable_progress_bar=false trainer.num_threads=1"
F="--config-dir ${MERGEMIX_HOME:-outputs}/testbeds/files/conf domains=files4 benchmarks=files4"
validate() {  # testbed, extra overrides...: the default merge, recovery calibration, extrapolated merges (x2)
  local tb=$1; shift
  for v in plain recovery scale2; do
    o=""; [ $v = recovery ] && o=search.calibration=recovery; [ $v = scale2 ] && o=search.merge_scale=2
    timeout "$(left)" python3 -m mergemix.cli validate $G $o "paths.run_dir=$out/validate/$tb-$v" "$@" \
      > "$out/validate-$tb-$v.log" 2>&1
  done
}
python3 experiments/testbed_files.py --help > /dev/null  # imports work
( validate embedded ) & ( validate files $F ) &
timeout "$(left)" python3 experiments/frontier.py --workers "${WORKERS:-12}" trainer=gpu 2>&1 \
  | grep --line-buffered -v "merge/s\|run/s\|^\[mix\|^\[expert\|^\[base" > "$out/frontier.log"
echo "frontier exit $? with $(left) s left"
python3 experiments/frontier.py --report-only --out "$out" trainer=gpu > "$out/report.log" 2>&1
wait
