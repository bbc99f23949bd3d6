#!/usr/bin/env bash
# C engine against the PyTorch oracle over a grid of exits, widths, pooling, LoRA and pruning
# on tiny Mistral, Qwen2 and Gemma2 checkpoints (tests/oracle/grid.py), then the bundled models
# with their adapters in the configurations the cascades serve (tests/oracle/bundled.py).
# Usage: oracle_grid.sh MRANK
set -euo pipefail
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
/usr/bin/python3 tests/oracle/grid.py "$1" "$work"
/usr/bin/python3 tests/oracle/bundled.py "$1" models/mrank-tiny models/mrank-tiny-d8
