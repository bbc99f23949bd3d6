#!/usr/bin/python3
"""bundled.py: the bundled models' scores from the C engine (`mrank score`) against the PyTorch
oracle (mr_ref.py) on real text, in the configurations the cascades serve.

Usage: bundled.py MRANK MODEL_DIR [MODEL_DIR...]

Per model: every exit at full width without adapters; the deepest exit with the vertical
adapter; and, when MODEL/adapters/width-4 exists, exit 3 at ratio 4 with compress layers 1, 2 and
adapters vertical + width-4 (the cheap stage of deploy/local-d8.json), the adapters merged by
the engine and applied unmerged. Inputs are `mrank tokenize --json` rows, so both sides score
the same ids. Relative error bound 1e-4 (floor 1e-2), as tests/oracle/grid.py.
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mr_ref  # noqa: E402
from grid import engine_rows, engine_scores  # noqa: E402

RTOL, FLOOR = 1e-4, 1e-2   # grid.py's, with its reasons; measured worst here 5.2e-5 (d8)
RTOL = float(os.environ.get("ORACLE_RTOL", RTOL))  # a low-precision path's bound (grid.py)
FLOOR = float(os.environ.get("ORACLE_FLOOR", FLOOR))
QUERY = "boundary layer transition on a heated flat plate"
PASSAGES = [
    "measurements of boundary layer transition on a flat plate with heat transfer .",
    "the opera season opened with a new production and a famous tenor .",
    "an analysis of the laminar boundary layer at supersonic speed with wall cooling , "
    "heat transfer and skin friction measured in a wind tunnel over a range of mach numbers .",
]


def main(argv):
    if len(argv) < 3:
        sys.stderr.write(__doc__)
        return 2
    mrank, failed, worst = argv[1], 0, 0.0
    for d in argv[2:]:
        rows = engine_rows(mrank, d, QUERY, PASSAGES)
        cfg = json.load(open(os.path.join(d, "config.json")))
        n, start = cfg["num_hidden_layers"], cfg["start_layer"]
        ad = os.path.join(d, "adapters")
        cases = [(list(range(start, n + 1)), 1, [], []),
                 ([n], 1, [], [os.path.join(ad, "vertical")])]
        if os.path.isdir(os.path.join(ad, "width-4")):
            cases.append(([3], 4, [1, 2], [os.path.join(ad, "vertical"),
                                           os.path.join(ad, "width-4")]))
        for exits, ratio, clayers, adapters in cases:
            for unmerged in ([False, True] if adapters else [False]):
                model = mr_ref.Model(d, adapters, round_merged=not unmerged)
                ref = mr_ref.score(model, rows, exits, ratio, clayers)
                got = engine_scores(mrank, d, QUERY, PASSAGES, exits, ratio, clayers,
                                    adapters, unmerged)
                # zip() stops at the shorter list: a missing row or exit fails here instead
                if [len(g) for g in got] != [len(w) for w in ref] or len(ref) != len(PASSAGES):
                    err = float("inf")
                    print("C gave %s scores per row, the reference %s" % (
                        [len(g) for g in got], [len(w) for w in ref]))
                else:
                    err = max(abs(a - b) / max(abs(b), FLOOR)
                              for g, w in zip(got, ref) for a, b in zip(g, w))
                worst = max(worst, err)
                ok = err <= RTOL
                failed += not ok
                print("%s %s exits %s ratio %d layers %s adapters %s: rel %.2e" % (
                    "ok  " if ok else "FAIL", d, exits, ratio, clayers,
                    ",".join(os.path.basename(a) for a in adapters) +
                    (" unmerged" if unmerged else ""), err), flush=True)
    print("worst relative error %.2e (tolerance %.0e), %d failed" % (worst, RTOL, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
