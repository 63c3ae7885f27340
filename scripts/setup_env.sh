#!/usr/bin/env bash
# Creates (or updates) the project's virtual environment at .venv/ with every dependency pinned,
# then installs cosme_ros into it in editable mode. Safe to run again: pip skips what is there.
#
#   bash scripts/setup_env.sh            # CPU machine, no ROS distro: ROS 2 wheels from PyPI
#   COSME_TRT=1 bash scripts/setup_env.sh   # also torch-tensorrt (CUDA machines only)
#
# Where a ROS 2 distro is sourced (ROS_DISTRO set), its rclpy and message packages are used and
# the venv sees them through --system-site-packages; the PyPI ROS wheels are not installed.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
py=${PYTHON:-python3.11}
command -v "$py" >/dev/null || py=python3

venv_flags=()
if [ -n "${ROS_DISTRO:-}" ]; then venv_flags+=(--system-site-packages); fi
if [ ! -x .venv/bin/python ]; then
  "$py" -m venv "${venv_flags[@]}" .venv
fi
pip=(.venv/bin/python -m pip install --disable-pip-version-check -q)

# torch first and pinned exactly: a looser spec would pull the CUDA wheels (gigabytes).
"${pip[@]}" -r requirements/torch.txt
"${pip[@]}" -r requirements/base.txt
if [ -z "${ROS_DISTRO:-}" ]; then
  "${pip[@]}" -r requirements/ros-wheels.txt
fi
if [ "${COSME_TRT:-0}" = "1" ]; then
  "${pip[@]}" -r requirements/tensorrt.txt
fi
"${pip[@]}" --no-deps --no-build-isolation -e .
# setup.cfg puts console scripts where `ros2 run` looks (lib/cosme_ros); expose them on the venv's PATH.
for s in .venv/lib/cosme_ros/*; do ln -sf "../lib/cosme_ros/$(basename "$s")" ".venv/bin/$(basename "$s")"; done
echo "environment ready: $root/.venv (activate with: source .venv/bin/activate)"
