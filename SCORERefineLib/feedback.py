"""The versioned ``feedback.json`` of a case: who rated which region, how, and when.

Layout (``version`` 1)::

    {"format": "scorerefine-feedback", "version": 1, "case_id": "case_000",
     "scale": {"min": 1, "max": 5, "anchors": {"1": "...", ..., "5": "..."}},
     "regions": {"labels": [1, 2, ...], "method": "patches", "n_regions": 12, "band_mm": 3.0},
     "raters": {"simulated": [{"region": 1, "score": 4, "error": "over",
                               "rated_at": "2026-11-22T19:00:00Z", "seconds": 4.0}, ...],
                "dr_a": [...]}}

A rating is a 1-5 ``score`` (anchors from :mod:`calibration`) and an ``error`` type: ``over``
(the mask is too big there), ``under`` (too small) or ``none``. A score of 5 means "no visible
error" and goes with ``none``; any lower score says which error it is.

An optional top-level ``"model_raters": ["suggested"]`` marks raters that are models (the
quality predictor's suggestions): :meth:`CaseFeedback.consensus` leaves them out unless asked, and
saving refuses to let a model rater replace a person's ratings under the same name, or the
reverse. Files without model raters are written exactly as before. A model rater may also keep,
per region, the probabilities behind its rating in an optional top-level ``"model_details"``
(``{"suggested": {"3": {"score_probs": [5 floats], "error_probs": [over, under, none]}}}``): the
panel's confidence and uncertainty order, and the confidence weight of filled-in ratings, come
from there.

Several raters are kept side by side. :func:`save_feedback` merges with the file on disk (raters
there that the new object lacks are kept), writes atomically and never overwrites a file it
cannot read; :func:`load_feedback` never modifies the file.
"""

from __future__ import annotations

import contextlib
import json
import math
import numbers
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Optional

from .atomicio import atomic_write_text
from .calibration import ANCHORS, SCORES
from .errors import FeedbackError

FORMAT = "scorerefine-feedback"
SCHEMA_VERSION = 1
ERROR_TYPES = ("over", "under", "none")
SCORE_MIN, SCORE_MAX = min(SCORES), max(SCORES)

_RATER_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|[+-]\d{2}:\d{2})$")


def utc_now() -> str:
    """The current time as ``YYYY-MM-DDTHH:MM:SSZ``."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Rating:
    """One rater's judgement of one region."""

    region: int
    score: int
    error: str
    rater: str
    rated_at: str
    seconds: float

    def to_dict(self) -> dict:
        return {"region": self.region, "score": self.score, "error": self.error,
                "rated_at": self.rated_at, "seconds": self.seconds}


def _is_int(value: Any) -> bool:
    """A whole number (Python or numpy integer), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_rater_name(rater: Any, where: str) -> None:
    if not isinstance(rater, str) or not _RATER_NAME.match(rater):
        raise FeedbackError(f"{where}: rater name {rater!r} is not valid; use 1-64 letters, digits, "
                            f"'_', '-' or '.' (e.g. 'dr_a').")


def _validate_rating(region: Any, score: Any, error: Any, rated_at: Any, seconds: Any,
                     labels: set, where: str) -> None:
    """Raise :class:`FeedbackError` (message starts with ``where``) for an invalid rating."""
    if not _is_int(region) or region not in labels:
        raise FeedbackError(f"{where}: unknown region {region!r}; this case's regions are "
                            f"{_short(sorted(labels))}. Were the regions recomputed after rating?")
    if not _is_int(score):
        raise FeedbackError(f"{where}: score {score!r} is not an integer; give a whole number "
                            f"{SCORE_MIN}..{SCORE_MAX}.")
    if not SCORE_MIN <= score <= SCORE_MAX:
        raise FeedbackError(f"{where}: score {score} is out of range {SCORE_MIN}..{SCORE_MAX}.")
    if error not in ERROR_TYPES:
        raise FeedbackError(f"{where}: unknown error type {error!r}; use one of {', '.join(ERROR_TYPES)}.")
    if error == "none" and score < SCORE_MAX:
        raise FeedbackError(f"{where}: score {score} says there is an error but the error type is "
                            f"'none'; say 'over' (mask too big) or 'under' (mask too small), or "
                            f"give score {SCORE_MAX}.")
    if score == SCORE_MAX and error != "none":
        raise FeedbackError(f"{where}: score {SCORE_MAX} means no visible error, but the error type is "
                            f"'{error}'; use error 'none' or a lower score.")
    if (isinstance(seconds, bool) or not isinstance(seconds, numbers.Real)
            or not math.isfinite(seconds) or seconds < 0):
        raise FeedbackError(f"{where}: seconds {seconds!r} must be a time >= 0 (seconds spent rating).")
    if not isinstance(rated_at, str) or not _TIMESTAMP.match(rated_at):
        raise FeedbackError(f"{where}: bad timestamp rated_at={rated_at!r}; use ISO 8601 UTC such as "
                            f"'2026-11-22T19:00:00Z'.")
    try:
        datetime.fromisoformat(rated_at.replace("Z", "+00:00"))
    except ValueError:
        raise FeedbackError(f"{where}: bad timestamp rated_at={rated_at!r} (not a real date/time); "
                            f"use ISO 8601 UTC such as '2026-11-22T19:00:00Z'.") from None


def _short(items: list, n: int = 20) -> str:
    return str(items) if len(items) <= n else f"{items[:n]} ... ({len(items)} in all)"


@dataclass
class CaseFeedback:
    """All ratings of one case.

    Attributes:
        case_id: the case folder name.
        region_labels: the region labels that may be rated (sorted, positive integers).
        region_info: how the regions were made (``method``, ``n_regions``, ``band_mm``, ...).
        raters: ``{rater: {region: Rating}}``.
    """

    case_id: str
    region_labels: list[int]
    region_info: dict = field(default_factory=dict)
    raters: dict[str, dict[int, Rating]] = field(default_factory=dict)
    #: raters that are models (e.g. the quality predictor's ``suggested``), not people
    model_raters: set = field(default_factory=set)
    #: per model rater, per region: ``{"score_probs": [5], "error_probs": [3]}`` (optional)
    model_details: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.case_id, str) or not self.case_id:
            raise FeedbackError(f"case_id must be a non-empty string, got {self.case_id!r}.")
        labels = list(self.region_labels)
        if any(not _is_int(v) or v < 1 for v in labels) or len(set(labels)) != len(labels):
            raise FeedbackError(f"case {self.case_id}: region labels must be distinct integers >= 1, "
                                f"got {_short(labels)}.")
        self.region_labels = sorted(int(v) for v in labels)
        self.region_info = {k: v for k, v in dict(self.region_info or {}).items() if k != "labels"}

    # ---------------------------------------------------------------- editing

    def rate(self, rater: str, region: int, score: int, error: str, seconds: float = 0.0,
             rated_at: Optional[str] = None) -> Rating:
        """Record (or replace) ``rater``'s rating of ``region``; validated first."""
        rated_at = utc_now() if rated_at is None else rated_at
        where = f"case {self.case_id}, rater '{rater}', region {region}"
        _check_rater_name(rater, f"case {self.case_id}")
        _validate_rating(region, score, error, rated_at, seconds, set(self.region_labels), where)
        rating = Rating(int(region), int(score), str(error), rater, rated_at, float(seconds))
        self.raters.setdefault(rater, {})[rating.region] = rating
        return rating

    def unrate(self, rater: str, region: int) -> None:
        """Forget ``rater``'s rating of ``region`` (no-op when there is none)."""
        ratings = self.raters.get(rater)
        if ratings is None:
            return
        ratings.pop(region, None)
        if not ratings:
            del self.raters[rater]

    # ---------------------------------------------------------------- reading

    def ratings(self, rater: Optional[str] = None) -> list[Rating]:
        """All ratings (of one rater when given), sorted by rater then region."""
        names = sorted(self.raters) if rater is None else [rater]
        return [self.raters[n][r] for n in names if n in self.raters for r in sorted(self.raters[n])]

    def rated_regions(self) -> list[int]:
        """Regions that at least one rater rated, sorted."""
        return sorted({r for ratings in self.raters.values() for r in ratings})

    def consensus(self, include_models: bool = False) -> dict[int, tuple[float, str]]:
        """Per rated region: ``(mean score over its raters, majority error type)``.

        The error type is the most frequent of ``over``/``under`` among the raters of that
        region; ``none`` only when every rater said ``none``. A tie goes to the type given with
        the lowest score (the most worried rater); a tie there too goes to ``over``.
        """
        per_region: dict[int, list[Rating]] = {}
        for ratings in self._raters_for_consensus(include_models):
            for region, rating in ratings.items():
                per_region.setdefault(region, []).append(rating)
        out: dict[int, tuple[float, str]] = {}
        for region in sorted(per_region):
            rs = per_region[region]
            mean = sum(r.score for r in rs) / len(rs)
            votes = Counter(r.error for r in rs if r.error != "none")
            if not votes:
                out[region] = (mean, "none")
                continue
            top = max(votes.values())
            tied = [e for e in ("over", "under") if votes.get(e) == top]
            if len(tied) > 1:
                lowest = {e: min(r.score for r in rs if r.error == e) for e in tied}
                tied = sorted(tied, key=lambda e: (lowest[e], ("over", "under").index(e)))
            out[region] = (mean, tied[0])
        return out

    # ---------------------------------------------------------------- model raters

    def is_model(self, rater: str) -> bool:
        """True for a rater marked as a model (its ratings are suggestions, not a person's)."""
        return rater in self.model_raters

    def human_raters(self) -> list[str]:
        """Raters that are people, sorted."""
        return sorted(n for n in self.raters if n not in self.model_raters)

    def _raters_for_consensus(self, include_models: bool):
        """Consensus (the training target) reads people's ratings only, unless asked."""
        return [r for n, r in self.raters.items() if include_models or n not in self.model_raters]

    # ---------------------------------------------------------------- (de)serialising

    def to_dict(self) -> dict:
        """The JSON-ready dict of the module docstring's layout."""
        return {
            "format": FORMAT,
            "version": SCHEMA_VERSION,
            "case_id": self.case_id,
            "scale": {"min": SCORE_MIN, "max": SCORE_MAX,
                      "anchors": {str(s): ANCHORS[s] for s in SCORES}},
            "regions": {"labels": list(self.region_labels), **self.region_info},
            "raters": {name: [self.raters[name][r].to_dict() for r in sorted(self.raters[name])]
                       for name in sorted(self.raters)},
            # written only when there is one, so files without model raters are unchanged
            **({"model_raters": sorted(self.model_raters)} if self.model_raters else {}),
            **({"model_details": {name: {str(r): dict(d) for r, d in sorted(regions.items())}
                                  for name, regions in sorted(self.model_details.items()) if regions}}
               if any(self.model_details.values()) else {}),
        }

    @classmethod
    def from_dict(cls, d: Any, source: str = "feedback") -> "CaseFeedback":
        """Validate and build; :class:`FeedbackError` naming ``source``, rater and region."""
        if not isinstance(d, dict):
            raise FeedbackError(f"{source}: expected a JSON object at the top, got {type(d).__name__}.")
        if d.get("format") != FORMAT:
            raise FeedbackError(f"{source}: not a SCORERefine feedback file (format is "
                                f"{d.get('format')!r}, expected '{FORMAT}').")
        version = d.get("version")
        if not _is_int(version) or version < 1:
            raise FeedbackError(f"{source}: bad version {version!r}; expected {SCHEMA_VERSION}.")
        if version > SCHEMA_VERSION:
            raise FeedbackError(f"{source}: feedback version {version} was written by a newer "
                                f"SCORERefine (this one reads version {SCHEMA_VERSION}); upgrade "
                                f"SCORERefine to read it.")
        scale = d.get("scale", {"min": SCORE_MIN, "max": SCORE_MAX})
        if not isinstance(scale, dict) or scale.get("min") != SCORE_MIN or scale.get("max") != SCORE_MAX:
            raise FeedbackError(f"{source}: the score scale {scale!r} is not the "
                                f"{SCORE_MIN}-{SCORE_MAX} scale this SCORERefine uses.")
        regions = d.get("regions")
        if not isinstance(regions, dict) or not isinstance(regions.get("labels"), list):
            raise FeedbackError(f"{source}: missing 'regions': {{'labels': [...]}}, the rateable "
                                f"region labels.")
        case_id = d.get("case_id")
        if not isinstance(case_id, str) or not case_id:
            raise FeedbackError(f"{source}: missing or empty 'case_id'.")
        try:
            fb = cls(case_id, regions["labels"], {k: v for k, v in regions.items() if k != "labels"})
        except FeedbackError as exc:
            raise FeedbackError(f"{source}: {exc}") from None
        raters = d.get("raters", {})
        if not isinstance(raters, dict):
            raise FeedbackError(f"{source}: 'raters' must be an object {{rater: [ratings]}}.")
        model_raters = d.get("model_raters", [])
        if not isinstance(model_raters, list):
            raise FeedbackError(f"{source}: 'model_raters' must be a list of rater names.")
        for name in model_raters:
            _check_rater_name(name, source)
        fb.model_raters = set(model_raters)
        labels = set(fb.region_labels)
        for name, items in raters.items():
            _check_rater_name(name, source)
            if not isinstance(items, list):
                raise FeedbackError(f"{source}: rater '{name}': ratings must be a list.")
            for i, item in enumerate(items):
                if not isinstance(item, dict):
                    raise FeedbackError(f"{source}: rater '{name}', rating #{i + 1}: expected an object.")
                region = item.get("region")
                where = f"{source}: rater '{name}', region {region!r}"
                missing = [k for k in ("region", "score", "error", "rated_at", "seconds") if k not in item]
                if missing:
                    raise FeedbackError(f"{where}: missing {', '.join(missing)}.")
                _validate_rating(region, item["score"], item["error"], item["rated_at"],
                                 item["seconds"], labels, where)
                if region in fb.raters.get(name, {}):
                    raise FeedbackError(f"{where}: rated twice by the same rater; keep one rating.")
                fb.raters.setdefault(name, {})[region] = Rating(
                    region, item["score"], item["error"], name, item["rated_at"], float(item["seconds"]))
        fb.model_details = _parse_model_details(d.get("model_details", {}), fb, source)
        return fb


def _probabilities(value: Any, n: int) -> bool:
    return (isinstance(value, list) and len(value) == n
            and all(isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)
                    and -1e-6 <= v <= 1 + 1e-6 for v in value)
            and abs(sum(value) - 1.0) <= 1e-3)


def _parse_model_details(details: Any, fb: "CaseFeedback", source: str) -> dict:
    """Validate the optional ``model_details`` (see the module docstring)."""
    if not isinstance(details, dict):
        raise FeedbackError(f"{source}: 'model_details' must be an object {{model rater: {{region: "
                            f"probabilities}}}}.")
    out: dict = {}
    for name, regions in details.items():
        if name not in fb.model_raters:
            raise FeedbackError(f"{source}: 'model_details' has '{name}', which is not listed in "
                                f"'model_raters'; details belong to model raters only.")
        if not isinstance(regions, dict):
            raise FeedbackError(f"{source}: model_details of '{name}' must map regions to probabilities.")
        for key, d in regions.items():
            where = f"{source}: model_details of '{name}', region {key!r}"
            if not (isinstance(key, str) and key.isdigit() and int(key) in fb.region_labels):
                raise FeedbackError(f"{where}: unknown region; this case's regions are "
                                    f"{_short(fb.region_labels)}.")
            if not (isinstance(d, dict) and _probabilities(d.get("score_probs"), 5)
                    and _probabilities(d.get("error_probs"), 3)):
                raise FeedbackError(f"{where}: needs 'score_probs' (5 probabilities summing to 1) "
                                    f"and 'error_probs' (3: over, under, none). Re-run `scorerefine "
                                    f"quality predict` to rewrite them.")
            out.setdefault(name, {})[int(key)] = {"score_probs": [float(v) for v in d["score_probs"]],
                                                   "error_probs": [float(v) for v in d["error_probs"]]}
    return out


# -------------------------------------------------------------------- files


def load_feedback(path: str | os.PathLike) -> CaseFeedback:
    """Read and validate a feedback file (never modifies it).

    Raises:
        FeedbackError: missing file, JSON syntax error (line and column), wrong format or
            version, invalid rating (names the file, rater and region).
    """
    path = Path(path)
    if not path.exists():
        raise FeedbackError(f"feedback file not found: {path}. Rate the case first "
                            f"(`scorerefine rate` or the SCORERefine Slicer module).")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise FeedbackError(f"cannot read feedback file {path}: {exc}.") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise FeedbackError(f"{path}: JSON syntax error at line {exc.lineno}, column {exc.colno}: "
                            f"{exc.msg}. Fix the file or move it aside.") from None
    return CaseFeedback.from_dict(data, source=str(path))


@contextlib.contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """Exclusive advisory lock on ``folder`` (POSIX flock on the directory; no lock file is
    left behind). Serialises read-merge-write of concurrent savers; a no-op where unsupported."""
    try:
        import fcntl
        fd = os.open(folder, os.O_RDONLY)
    except (ImportError, OSError):
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


def _atomic_write_json(data: dict, path: Path) -> None:
    """Serialise first (a serialising error leaves the disk untouched), then write atomically."""
    atomic_write_text(path, json.dumps(data, indent=1) + "\n")


def merge_feedback(on_disk: CaseFeedback, fb: CaseFeedback, source: str = "feedback") -> CaseFeedback:
    """``fb`` with the raters of ``on_disk`` that ``fb`` lacks; for a rater in both, ``fb`` wins."""
    if on_disk.case_id != fb.case_id:
        raise FeedbackError(f"{source} belongs to case '{on_disk.case_id}', not '{fb.case_id}'; "
                            f"it was not changed. Save to the right case folder.")
    if on_disk.region_labels != fb.region_labels:
        raise FeedbackError(f"{source} rates regions {_short(on_disk.region_labels)} but the new "
                            f"feedback has regions {_short(fb.region_labels)}: the regions changed "
                            f"since rating. The file was not changed; move it aside to start over.")
    _check_model_humans(on_disk, fb, source)
    merged = CaseFeedback(fb.case_id, list(fb.region_labels), dict(fb.region_info or on_disk.region_info))
    merged.model_raters = (set(on_disk.model_raters) | set(fb.model_raters)) & (
        set(on_disk.raters) | set(fb.raters) | set(fb.model_raters))
    for name, ratings in on_disk.raters.items():
        merged.raters[name] = dict(ratings)
    for name, ratings in fb.raters.items():
        merged.raters[name] = dict(ratings)
    # a model rater's details travel with its ratings (from the side whose ratings are kept)
    for name in merged.model_raters:
        side = fb if name in fb.raters else on_disk
        if side.model_details.get(name):
            merged.model_details[name] = dict(side.model_details[name])
    return merged


def _check_model_humans(on_disk: CaseFeedback, fb: CaseFeedback, source: str) -> None:
    """A model rater never replaces a person's ratings, nor a person a model's (same name)."""
    for name in set(on_disk.raters) & set(fb.raters):
        if on_disk.is_model(name) != fb.is_model(name):
            was, now = (("a model", "a person") if on_disk.is_model(name) else ("a person", "a model"))
            raise FeedbackError(f"{source}: rater '{name}' is {was} there but {now} in the new "
                                f"feedback; the file was not changed. Save under another rater name.")
    for name in set(fb.model_raters) & set(on_disk.raters) - set(on_disk.model_raters):
        raise FeedbackError(f"{source}: '{name}' rates there as a person and cannot be marked as a "
                            f"model; the file was not changed. Use another name for the model.")


def save_feedback(fb: CaseFeedback, path: str | os.PathLike) -> None:
    """Save atomically, merged with the file on disk (raters there that ``fb`` lacks are kept).

    Raises:
        FeedbackError: the file on disk is invalid (it is left untouched: fix it or move it
            aside), belongs to another case, or rates other region labels.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _folder_lock(path.parent):
        data = fb
        if path.exists():
            try:
                on_disk = load_feedback(path)
            except FeedbackError as exc:
                raise FeedbackError(f"existing feedback file {path} is invalid and was NOT "
                                    f"overwritten ({exc}). Fix it or move it aside, then save "
                                    f"again.") from None
            data = merge_feedback(on_disk, fb, str(path))
        _atomic_write_json(data.to_dict(), path)


def rating_summary(fb: CaseFeedback) -> str:
    """A few human-readable lines: per rater the count, mean score and error types, then the
    per-region scores (``3o`` = score 3, over; ``2u`` = under; ``5`` = no error)."""
    n = len(fb.region_labels)
    lines = [f"case {fb.case_id}: {n} regions, {len(fb.raters)} rater(s)"]
    for name in sorted(fb.raters):
        rs = fb.ratings(name)
        if not rs:
            continue
        mean = sum(r.score for r in rs) / len(rs)
        kinds = Counter(r.error for r in rs)
        cells = " ".join(f"{r.region}:{r.score}{'' if r.error == 'none' else r.error[0]}" for r in rs)
        lines.append(f"  {name}: {len(rs)}/{n} rated, mean {mean:.2f} "
                     f"(over {kinds['over']}, under {kinds['under']}, none {kinds['none']}) | {cells}")
    return "\n".join(lines)
