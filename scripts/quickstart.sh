#!/usr/bin/env bash
# Set up .venv, import the real Cityscapes ESPNetv2 teacher (MIT, from ../shared/data) into a
# bundle under build/ (git-ignored), and segment + score the Cityscapes sample frame with it.
# Results land in out/quickstart/. The README's real-data example, next to `cosme demo` (the
# embedded default, synthetic).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
shared=${COSME_SHARED_DATA:-"$root/../shared/data"}
weights="$shared/teachers/espnetv2/espnetv2_s_2.0_city_1024x512.pth"
sample="$shared/cityscapes_sample"
if [ ! -f "$weights" ] || [ ! -d "$sample" ]; then
  echo "quickstart needs ../shared/data (teacher checkpoint and Cityscapes sample); not found at $shared" >&2
  exit 1
fi
bash scripts/setup_env.sh >/dev/null
bundle=build/bundles/espnetv2-city
if [ ! -f "$bundle/manifest.yaml" ]; then
  .venv/bin/cosme bundle create --teacher espnetv2 --weights "$weights" --out "$bundle"
fi
image=$(find "$sample" -name '*leftImg8bit*' | head -n 1)
.venv/bin/cosme infer --bundle "$bundle" --input "$image" --output out/quickstart \
  --method maxlogit --force --json out/quickstart/summary.json
echo "class map, anomaly score and overlay: $(ls out/quickstart | tr '\n' ' ')"
