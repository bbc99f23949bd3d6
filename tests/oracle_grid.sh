#!/usr/bin/env bash
# C engine against the PyTorch oracle over a grid of exits, widths, pooling, LoRA and pruning
# on tiny Mistral, Qwen2 and Gemma2 checkpoints (tests/oracle/grid.py). Usage: oracle_grid.sh MRANK
set -euo pipefail
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
/usr/bin/python3 tests/oracle/grid.py "$1" "$work"
