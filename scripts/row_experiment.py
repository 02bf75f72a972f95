"""Train one benchmark row with one setting changed, on a benchmark work folder, and evaluate it
on that folder's held-out test cases, exactly as ``scorerefine benchmark`` trains and evaluates.

Used for the seed and setting study in docs/score-loss.md ("Appearance as a network input, and
how much one training varies"). Run ``scorerefine benchmark --preset real --workdir W`` first
(it builds, splits and rates the cohort in W), then e.g.::

    python scripts/row_experiment.py real W score 1 seed1
    python scripts/row_experiment.py real W score 0 appearance '{"mode": {"channels": ["ct", "initial", "edge", "appearance"]}}'
    python scripts/row_experiment.py real W score 0 pf10 '{"mode": {"weights": {"pseudo_fraction": 1.0}}}'
    python scripts/row_experiment.py real W full 1 full_seed1

Arguments: preset, work folder, row, training seed, a name (the model goes to
``W/models/exp_<name>.pt``, predictions to ``W/test/cases/*/predictions/<name>.*``), and optional
JSON overrides: ``mode`` (fields of the row's mode config; ``weights`` fields of the SCORE loss
weights) and ``train`` (fields of ``TrainConfig``). Prints one line per test case (case, initial
Dice, refined Dice, initial HD95, refined HD95) and a RESULT line.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

from SCORERefineLib import benchmark as B


def evaluate_and_print(workdir: Path, name: str, refiner) -> None:
    """Refine ``workdir``'s test cases as prediction ``name``; print one line per case (case,
    initial Dice, refined Dice, initial HD95, refined HD95) and the RESULT line."""
    refined = B.evaluate_masks(workdir / "test", name, refiner)
    initial = {r["case"]: r for r in
               B.evaluate_masks(workdir / "test", "initial", B.make_refiner("identity")).rows}
    out = []
    for r in refined.rows:
        a = initial[r["case"]]
        out.append((r["case"], a["dice"], r["dice"], a["hd95"], r["hd95"]))
        print(r["case"], *(round(v, 4) for v in out[-1][1:]), flush=True)
    gain = np.mean([o[2] - o[1] for o in out])
    print(f"RESULT {name}: gain {gain:+.4f} improved {sum(o[2] > o[1] + 1e-4 for o in out)}/{len(out)} "
          f"hd95 {np.mean([o[3] for o in out]):.2f}->{np.mean([o[4] for o in out]):.2f} "
          f"worse {sum(o[2] < o[1] - 0.005 for o in out)}")


def main(argv: list[str]) -> int:
    if len(argv) < 5:
        print(__doc__)
        return 2
    preset, workdir, row, seed, name = argv[0], Path(argv[1]), argv[2], int(argv[3]), argv[4]
    extra = json.loads(argv[5]) if len(argv) > 5 else {}
    cfg = B.PRESETS[preset]
    cfg = B.BenchConfig(**{**dataclasses.asdict(cfg),
                           "n_train": len(list(B.list_cases(workdir / "train")))})
    config = B.row_config(row, cfg, "cpu")
    mc = dict(extra.get("mode", {}))
    if "channels" in mc:
        mc["channels"] = tuple(mc["channels"])
    if "weights" in mc:
        mc["weights"] = dataclasses.replace(config.mode_config.weights, **mc["weights"])
    config = dataclasses.replace(config, seed=seed,
                                 mode_config=dataclasses.replace(config.mode_config, **mc),
                                 **extra.get("train", {}))
    res = B.train_model(workdir / "train", workdir / "models" / f"exp_{name}.pt", config,
                        progress="none")
    evaluate_and_print(workdir, name, B.make_refiner(res.model, "cpu"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
