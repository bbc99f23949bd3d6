#!/usr/bin/env bash
# oracle_selftest.sh: the PyTorch oracle (tests/oracle/mr_ref.py), which every oracle comparison
# trusts, checked against facts that hold without it (tests/oracle/selftest.py: a naive numpy
# second implementation to 1e-12, structural identities, pruning semantics, loading, and the
# logic of scripts/gpu_check_transformers.py against a fake transformers). Pure Python: labelled
# slow in CMakeLists.txt, so it runs once, in the main build. Exit status 1 on any failed check.
# Usage: oracle_selftest.sh MRANK  (MRANK unused; every script test gets it)
set -euo pipefail
cd "$(dirname "$0")/.."
/usr/bin/python3 tests/oracle/selftest.py
