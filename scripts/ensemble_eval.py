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

from SCORERefineLib import benchmark as B

from row_experiment import evaluate_and_print   # scripts/ is on the path when run as a script


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print(__doc__)
        return 2
    workdir, name, models = Path(argv[0]), argv[1], argv[2:]
    evaluate_and_print(workdir, name, B.make_refiner(models[0], "cpu", also=models[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
