#!/usr/bin/env bash
# Every method of one or more demo-world bundles on six renders of the synthetic test split
# (seeds 0-5, 200 frames each, 192x384), as mean ± spread: one 200-frame render moves AP by about
# ±3 points, so bundles and methods are compared on the mean. Seed 0 is the model card's split.
#
# Usage: bash scripts/benchmark_demo_renders.sh NAME=BUNDLE_DIR [NAME=BUNDLE_DIR ...]
#   e.g. bash scripts/benchmark_demo_renders.sh mobilenetv2=models/demo r18-scratch=build/old-demo
# Renders go to build/renders/test-s<seed> (kept between runs), reports to
# build/renders/<NAME>-s<seed>.json, the tables to build/renders/tables.md.
# METHODS (environment) overrides the rows: every method plus Eq. 8's other fusions by default;
# ROWS=psi gives the rows of BENCHMARKS.md "A scale-free, standardised Ψ" (the bundles need Ψ
# statistics: `cosme train-student --stats-only --bundle B --data synthetic:build/demo-work/world/train`).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
py=${COSME_PYTHON:-$root/.venv/bin/python}
[ -x "$py" ] || bash scripts/setup_env.sh >/dev/null
cosme() { "$py" -m cosme_ros.cli.main "$@"; }
[ $# -ge 1 ] || { sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
PSI_ROWS="msp,maxlogit,entropy,sml,pans,mulmem,auxcon,auxcon[layers=c4],auxcon[standardize=true]"
PSI_ROWS="$PSI_ROWS,auxcon[layers=c4,standardize=true],auxcon[boundary=true,distance=cosine,standardize=true]"
PSI_ROWS="$PSI_ROWS,auxcon[boundary=true,distance=cosine,layers=c4,standardize=true],cosme,cosme[consensus=c4]"
PSI_ROWS="$PSI_ROWS,cosme[consensus=c4,fusion=softplus],cosme[boundary=true,fusion=softplus,standardize_psi=true]"
PSI_ROWS="$PSI_ROWS,cosme[consensus=c4,fusion=softplus,standardize_psi=true]"
PSI_ROWS="$PSI_ROWS,cosme[boundary=true,consensus=c4,fusion=softplus,standardize_psi=true]"
PSI_ROWS="$PSI_ROWS,cosme[boundary=true,consensus=c4,fusion=zsum,standardize_psi=true]"
PSI_ROWS="$PSI_ROWS,cosme[boundary=true,consensus=c4,distance=cosine,fusion=softplus,standardize_psi=true]"
PSI_ROWS="$PSI_ROWS,cosme[boundary=true,consensus=c4,distance=relative,fusion=softplus,standardize_psi=true]"
PSI_ROWS="$PSI_ROWS,cosme[consensus=lh],cosme[boundary=true,consensus=lh,distance=cosine,fusion=softplus,standardize_psi=true]"
if [ "${ROWS:-}" = psi ]; then METHODS=${METHODS:-$PSI_ROWS}; fi
METHODS=${METHODS:-msp,maxlogit,entropy,sml,pans,mulmem,auxcon,cosme,cosme[fusion=softplus],cosme[fusion=exp],cosme[fusion=raw]}
out=build/renders
mkdir -p "$out"
for s in 0 1 2 3 4 5; do
  [ -f "$out/test-s$s/.done" ] && continue
  cosme synth --out "$out/test-s$s" --split test --n 200 --seed "$s" --size 192x384 --force
  touch "$out/test-s$s/.done"
done
specs=()
for arg in "$@"; do
  name=${arg%%=*}; bundle=${arg#*=}
  files=()
  for s in 0 1 2 3 4 5; do
    t0=$(date +%s)
    cosme evaluate --bundle "$bundle" --data "synthetic:$out/test-s$s" --methods "$METHODS" \
      --json "$out/$name-s$s.json" --force > "$out/$name-s$s.log"
    echo "$name seed $s: $(( $(date +%s) - t0 )) s"
    files+=("$out/$name-s$s.json")
  done
  specs+=(--bundle "$name=$(IFS=,; echo "${files[*]}")")
done
"$py" scripts/renders_table.py "${specs[@]}" | tee "$out/tables.md"
