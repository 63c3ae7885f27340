#!/usr/bin/env bash
# The whole test suite, from nothing: builds .venv (idempotent) and runs pytest in it.
# Tests that start ROS processes set ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST and a random
# ROS_DOMAIN_ID themselves; exporting the range here too keeps any stray process on loopback.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bash scripts/setup_env.sh
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
exec .venv/bin/python -m pytest "$@"
