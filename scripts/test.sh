#!/usr/bin/env bash
# The whole test suite, from nothing: builds .venv (idempotent) and runs pytest in it.
# Tests that start ROS processes set ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST and a random
# ROS_DOMAIN_ID themselves; exporting the range here too keeps any stray process on loopback.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bash scripts/setup_env.sh
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
# lint and format check first (ruff.toml): a style error fails the run like a test would
.venv/bin/ruff check cosme_ros test scripts launch setup.py
.venv/bin/ruff format --check --quiet cosme_ros test scripts launch setup.py
exec .venv/bin/python -m pytest "$@"
