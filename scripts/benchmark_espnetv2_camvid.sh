#!/usr/bin/env bash
# The first real-data benchmark of BENCHMARKS.md ("Anomaly segmentation on real images"): the
# Cityscapes ESPNetv2 s=2.0 teacher with memory and student from CamVid train, every method, each
# method refined by the guided filter, and the ablation rows of that section. It is
# `scripts/benchmark_real.sh espnetv2 camvid` (same bundle, settings and steps) with those rows;
# tables in build/benchmark/.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
METHODS=msp,maxlogit,entropy,sml,pans,mulmem,auxcon,cosme
# The eight methods refined (README, "Sharper anomaly maps"), then the "Ablations" rows,
# including Eq. 8's other fusions and the standardised Ψ.
ROWS=$(echo "$METHODS" | sed 's/\([a-z]*\)/\1[refine=guided]/g')
ROWS="$ROWS,mulmem[standardize=false],mulmem[layers=c4+c5,standardize=false]"
ROWS="$ROWS,mulmem[layers=lh,standardize=false],auxcon[layers=c4],auxcon[layers=c3+c4+c5]"
ROWS="$ROWS,auxcon[layers=lh],cosme[fusion=exp],cosme[fusion=softplus],cosme[fusion=raw]"
ROWS="$ROWS,cosme[fusion=raw,layers=c4+c5],cosme[consensus=c4,fusion=raw]"
ROWS="$ROWS,cosme[consensus=c4],auxcon[layers=c4,standardize=true]"
ROWS="$ROWS,auxcon[boundary=true,distance=cosine,standardize=true]"
ROWS="$ROWS,cosme[fusion=softplus,standardize_psi=true]"
ROWS="$ROWS,cosme[consensus=c4,fusion=softplus,standardize_psi=true]"
BENCH_ABLATIONS=${BENCH_ABLATIONS-$ROWS} BENCH_OUT=${BENCH_OUT:-build/benchmark} \
  exec bash "$root/scripts/benchmark_real.sh" espnetv2 camvid
