#!/usr/bin/env bash
# The real-data benchmark of BENCHMARKS.md ("Real data: three Cityscapes teachers"): one teacher,
# its memory and student from in-distribution frames, evaluated on Road Anomaly (60) and
# Fishyscapes Static val (30). Rebuilds the bundle and its tables from nothing on a 2-core CPU.
#
#   bash scripts/benchmark_real.sh TEACHER [MEMORY]
#     TEACHER  espnetv2 | edgetpu-deeplab | cfpnet
#     MEMORY   kitti-cityscapes (default): the 128 KITTI Road frames + the 10 Cityscapes train
#              frames, each at its own aspect ratio; camvid: CamVid train (367), the ablation
#
# The bundles are derived from research-licensed data: they live in the git-ignored
# build/bundles/<teacher>-<memory>/ and are never committed. Tables go to
# build/benchmark/<teacher>-<memory>/ (copy them into BENCHMARKS.md by hand after checking).
#
# Choices (and why):
#   input sizes      each teacher's bundle runs at its training geometry (ESPNetv2 and CFPNet
#                    512x1024, EdgeTPU-DeepLab 513x1025: DeepLab's k*16+1 grid). KITTI (3.3:1)
#                    goes in at 320x1056 (321x1057), the Cityscapes frames at the bundle's size;
#                    CamVid (4:3) is stretched to the bundle's 2:1, as in the ESPNetv2/CamVid run.
#   layers           the paper's (c4, c5, lh; Le = {c5}); CFPNet has no stage below stride 8, so
#                    its two deepest stages stand for c4 and c5 (c2, c3, lh; Le = {c3}).
#   K=512, 1 epoch   as the ESPNetv2/CamVid benchmark (cost of Algorithm 2 on 2 cores).
#   student R18      5 epochs of 256x512 crops: ResNet-50 does not fit the budget on 2 cores.
#   rows             the eight methods and the ablations that change one thing: raw Γ, the
#                    penultimate stage as consensus layer, and the standardised Ψ.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
teacher=${1:?usage: benchmark_real.sh espnetv2|edgetpu-deeplab|cfpnet [kitti-cityscapes|camvid]}
memory=${2:-kitti-cityscapes}
shared=${COSME_SHARED_DATA:-"$root/../shared/data"}
bundle=${BENCH_BUNDLE:-build/bundles/$teacher-$memory}
out=${BENCH_OUT:-build/benchmark/$teacher-$memory}
K=${BENCH_K:-512}
MEMORY_EPOCHS=${BENCH_MEMORY_EPOCHS:-1}
STUDENT_DEPTH=${BENCH_STUDENT_DEPTH:-18}
STUDENT_EPOCHS=${BENCH_STUDENT_EPOCHS:-5}
STUDENT_SIZE=${BENCH_STUDENT_SIZE:-256x512}

case "$teacher" in
  espnetv2)
    weights=$shared/teachers/espnetv2/espnetv2_s_2.0_city_1024x512.pth
    size=512x1024; kitti=320x1056; penult=c4 ;;
  edgetpu-deeplab)
    weights=$shared/teachers/edgetpu_deeplab_slim/deeplab_mobilenet_edgetpu_slim_cityscapes_quant.tflite
    size=513x1025; kitti=321x1057; penult=c4 ;;
  cfpnet)
    weights=$shared/teachers/cfpnet/cfpnet_crop-1024_800epoch.pth
    size=512x1024; kitti=320x1056; penult=c2 ;;
  *) echo "unknown teacher $teacher (espnetv2, edgetpu-deeplab, cfpnet)" >&2; exit 2 ;;
esac
case "$memory" in
  kitti-cityscapes)
    data=(--data "images:$shared/kitti_road_testing/images" --input-size "$kitti"
          --data "cityscapes:$shared/cityscapes_train_sample" --input-size "$size") ;;
  camvid)
    data=(--data "camvid:$shared/camvid") ;;
  *) echo "unknown memory data $memory (kitti-cityscapes, camvid)" >&2; exit 2 ;;
esac

METHODS=msp,maxlogit,entropy,sml,pans,mulmem,auxcon,cosme
ABLATIONS="mulmem[standardize=false],auxcon[layers=$penult],cosme[fusion=raw]"
ABLATIONS="$ABLATIONS,cosme[consensus=$penult],cosme[consensus=$penult,fusion=raw]"
ABLATIONS="$ABLATIONS,cosme[fusion=softplus,standardize_psi=true]"
ABLATIONS="$ABLATIONS,cosme[consensus=$penult,fusion=softplus,standardize_psi=true]"
METHODS="$METHODS,${BENCH_ABLATIONS-$ABLATIONS}"

bash scripts/setup_env.sh >/dev/null
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST  # nothing here uses ROS; the project's rule
cosme() { .venv/bin/python -m cosme_ros.cli.main "$@"; }
mkdir -p "$out"
start=$(date +%s)
step() { local name=$1; shift; local t0=$(date +%s); echo "== $name: $*"; "$@"; echo "== $name took $(( $(date +%s) - t0 )) s"; }

step bundle cosme bundle create --teacher "$teacher" --force --input-size "$size" \
  --weights "$weights" --out "$bundle"
step memory cosme build-memory --bundle "$bundle" "${data[@]}" --k "$K" \
  --epochs "$MEMORY_EPOCHS" --force --json "$out/build_memory.json"
step student cosme train-student --bundle "$bundle" "${data[@]}" \
  --depth "$STUDENT_DEPTH" --epochs "$STUDENT_EPOCHS" --size "$STUDENT_SIZE" --force \
  --json "$out/train_student.json"
step road_anomaly cosme evaluate --bundle "$bundle" --data "road_anomaly:$shared/road_anomaly" \
  --methods "$METHODS" --json "$out/road_anomaly.json" --markdown "$out/road_anomaly.md" \
  --plots "$out/plots_road_anomaly" --memory-limit 8 --force
step fs_static cosme evaluate --bundle "$bundle" --data "folder:$shared/fs_static" \
  --methods "$METHODS" --json "$out/fs_static.json" --markdown "$out/fs_static.md" \
  --plots "$out/plots_fs_static" --memory-limit 8 --force
.venv/bin/python scripts/real_table.py "$out/road_anomaly.json" "$out/fs_static.json" > "$out/table.md"
echo "benchmark done in $(( $(date +%s) - start )) s; table: $out/table.md"
