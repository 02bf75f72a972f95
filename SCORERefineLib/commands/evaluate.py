"""``scorerefine evaluate``: Dice, HD95 and ASSD of a prediction against the references."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "Dice, HD95 and ASSD (mm) of the initial masks or a named prediction against the references"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", help="dataset folder (holds cases/<case_id>/)")
    parser.add_argument("--prediction", default="initial", metavar="NAME",
                        help="'initial' (initial.nii.gz, default) or NAME for "
                             "cases/<id>/predictions/NAME.nii.gz")
    parser.add_argument("--out", metavar="FILE",
                        help="CSV or JSON file to write; the other format goes beside it "
                             "(default <dataset>/evaluation_<NAME>.csv and .json)")
    parser.add_argument("--progress", choices=("bar", "json", "none"), default="none",
                        help="progress display (default none)")


def output_paths(dataset: str, prediction: str, out: str | None) -> tuple[Path, Path]:
    """(csv, json) paths for ``--out`` (suffix .csv/.json or none) or the defaults."""
    if out is None:
        base = Path(dataset) / f"evaluation_{prediction}"
    else:
        base = Path(out)
        if base.suffix.lower() in (".csv", ".json"):
            base = base.with_suffix("")
    return base.with_name(base.name + ".csv"), base.with_name(base.name + ".json")


def run(args: argparse.Namespace) -> int:
    from ..metrics import evaluate_dataset, format_table, write_json, write_rows_csv

    skipped: list = []
    rows, summary = evaluate_dataset(args.dataset, args.prediction, skipped=skipped,
                                     progress=args.progress)
    print(f"{args.prediction} vs reference, {len(rows)} case(s) of {args.dataset}:")
    print(format_table(rows, summary))
    for cid, why in skipped:
        print(f"note: skipped {cid}: {why}")
    csv_path, json_path = output_paths(args.dataset, args.prediction, args.out)
    write_rows_csv(rows, csv_path)
    write_json({"dataset": str(args.dataset), "prediction": args.prediction, "rows": rows,
                "summary": summary, "skipped": [{"case_id": c, "reason": r} for c, r in skipped]},
               json_path)
    print(f"wrote {csv_path} and {json_path}")
    return 0
