"""``scorerefine regions``: split each case's initial mask into rateable regions (regions.nii.gz)."""

from __future__ import annotations

import argparse
import os
from datetime import datetime, timezone

import numpy as np

from ..case import Case, get_case, list_cases
from ..errors import InputError
from ..imageio import read_labels, write_volume
from ..regions import METHODS, RegionParams, make_regions

HELP = "split each case's initial mask into regions to rate (writes regions.nii.gz)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = RegionParams()
    parser.add_argument("dataset", help="dataset folder (holds cases/<case_id>/)")
    parser.add_argument("--method", choices=METHODS, default=d.method,
                        help=f"patches: compact surface patches; slabs: slabs along the principal "
                             f"axis (default {d.method})")
    parser.add_argument("--n-regions", type=int, default=d.n_regions,
                        help=f"target number of regions per case (default {d.n_regions}; fewer for "
                             f"a small mask)")
    parser.add_argument("--band-mm", type=float, default=d.band_mm,
                        help=f"band half-width around the mask surface, mm, each side (default {d.band_mm})")
    parser.add_argument("--seed", type=int, default=d.seed, help="k-means seed (default 0)")
    parser.add_argument("--case", nargs="+", metavar="ID", help="only these cases")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace regions even where feedback.json exists (the old feedback "
                             "is moved aside, since its ratings refer to the old region labels)")


def _load_initial(case: Case):
    """The initial mask, checked to lie on the image grid (regions must share it)."""
    return case.load_initial(like=case.load_image())


def _would_change(case: Case, new: np.ndarray) -> bool:
    if not case.has_regions:
        return True
    try:
        old = read_labels(case.regions_path).array
    except InputError:
        return True
    if old.shape != new.shape:
        return True
    if np.array_equal(old, new):
        return False
    if case.has_feedback:   # regions extended after rating (`scorerefine rate`): same split?
        from ..feedback import load_feedback
        from ..regions import extend_regions, params_from_info

        fb = load_feedback(case.feedback_path)
        if fb.region_info.get("extended"):
            initial = _load_initial(case)
            ext = extend_regions(new, initial.array, initial.geometry.spacing_zyx,
                                 fb.consensus(), params_from_info(fb.region_info))
            return not np.array_equal(old, ext)
    return True


def _move_aside(path: os.PathLike) -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    src = os.fspath(path)
    dst = f"{src[:-len('.json')]}.stale-{stamp}.json"
    n = 1
    while os.path.exists(dst):
        n += 1
        dst = f"{src[:-len('.json')]}.stale-{stamp}-{n}.json"
    os.replace(src, dst)
    return dst


def run(args: argparse.Namespace) -> int:
    params = RegionParams(method=args.method, n_regions=args.n_regions, band_mm=args.band_mm,
                          seed=args.seed)
    params.validate()
    cases = [get_case(args.dataset, c) for c in args.case] if args.case else list_cases(args.dataset)

    # first pass: refuse before writing anything when rated regions would change
    if not args.overwrite:
        conflicts = []
        for case in cases:
            if case.has_feedback:
                new = make_regions(_load_initial(case), params).array
                if _would_change(case, new):
                    conflicts.append(case.case_id)
        if conflicts:
            raise InputError(
                f"case(s) {', '.join(conflicts)} already have feedback.json and their regions would "
                f"change, which would make the ratings point at the wrong regions. Nothing was "
                f"written. Rerun with the parameters used before, or with --overwrite to replace "
                f"the regions (the old feedback.json is then moved aside).")

    for case in cases:
        regions = make_regions(_load_initial(case), params)
        labels = np.unique(regions.array[regions.array > 0])
        band = int(np.count_nonzero(regions.array))
        changed = _would_change(case, regions.array)
        note = "unchanged"
        if changed:
            if case.has_feedback:
                note = f"old feedback moved to {os.path.basename(_move_aside(case.feedback_path))}"
            write_volume(regions, case.regions_path, dtype=np.int16)
            note = "written" if note == "unchanged" else f"written; {note}"
        print(f"{case.case_id}: {len(labels)} regions ({params.method}, target {params.n_regions}), "
              f"{band} band voxels ({params.band_mm:g} mm each side) -> {case.regions_path.name} "
              f"[{note}]", flush=True)
    return 0
