"""Evaluate an ensemble of trained refiners (the mean probability of several checkpoints of one
setting, then the guard: ``ModelRefiner(..., also=[...])``, ``scorerefine refine --also-model``)
on a benchmark work folder's held-out test cases, as ``scorerefine benchmark`` evaluates a row.

Used for docs/score-loss.md ("Each structure its own errors", stop 22), e.g. after
``scorerefine benchmark --preset real --workdir W`` and
``python scripts/row_experiment.py real W score S v3sS`` for seeds 1 and 2::

    python scripts/ensemble_eval.py W ens3 W/models/score.pt W/models/exp_v3s1.pt W/models/exp_v3s2.pt

Arguments: work folder, a prediction name (``W/test/cases/*/predictions/<name>.*``), then the
checkpoints. Prints one line per test case (case, initial Dice, refined Dice, initial HD95,
refined HD95) and a RESULT line in the format of ``scripts/row_experiment.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from SCORERefineLib import benchmark as B


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print(__doc__)
        return 2
    workdir, name, models = Path(argv[0]), argv[1], argv[2:]
    refiner = B.make_refiner(models[0], "cpu", also=models[1:])
    refined = B.evaluate_masks(workdir / "test", name, refiner)
    initial = {r["case"]: r for r in
               B.evaluate_masks(workdir / "test", "initial", B.make_refiner("identity")).rows}
    out = []
    for r in refined.rows:
        a = initial[r["case"]]
        out.append((a["dice"], r["dice"], a["hd95"], r["hd95"]))
        print(r["case"], *(round(v, 4) for v in out[-1]), flush=True)
    gain = np.mean([o[1] - o[0] for o in out])
    print(f"RESULT {name}: gain {gain:+.4f} improved {sum(o[1] > o[0] + 1e-4 for o in out)}/{len(out)} "
          f"hd95 {np.mean([o[2] for o in out]):.2f}->{np.mean([o[3] for o in out]):.2f} "
          f"worse {sum(o[1] < o[0] - 0.005 for o in out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
