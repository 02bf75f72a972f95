"""The rating session the Slicer panel binds to (no Qt, no slicer: plain Python, tested by pytest).

A :class:`RatingSession` holds one case's regions, the current region and the rater's ratings (a
:class:`~.feedback.CaseFeedback`). The panel only forwards key presses and button clicks as
commands and redraws when an observer callback says something changed:

=========  =====================================================
key        command
=========  =====================================================
1 .. 5     ``rate(score)``: the current region's quality score
O          ``mark_over()``: the region is over-segmented (again: stays so)
U          ``mark_under()``: the region is under-segmented (again: stays so)
N, Space   ``next_unrated()``: the next region without a score
A          ``accept_suggestion()``: take the quality predictor's suggestion as your rating
=========  =====================================================

Suggestions (issue 11): when the case's feedback holds the quality predictor's ``suggested``
model rater (``scorerefine quality predict``, or :meth:`RatingSession.add_suggestions` from the
panel), every region shows the suggested score, over/under and the predictor's confidence; ``A``
records the suggestion as the *person's* rating (never over one they gave). With
``order = "uncertainty"`` the next region is the predictor's most doubtful unrated one (highest
entropy first), and the session says when the remaining regions are confidently good.

Score 5 means "no visible error" and is recorded at once. A score 1-4 is recorded together with
its over/under mark, in either order (3 then O, or O then 3); until both are given the region shows
the pending part and "needs O/U". Every change of a rating can be undone (:meth:`RatingSession.undo`). Ratings are validated by ``feedback.py``;
its :class:`~.errors.FeedbackError` passes through unchanged.

Persistence: :meth:`RatingSession.save_to_case` writes ``feedback.json`` in the case folder (atomic,
merging other raters); :meth:`RatingSession.to_json` / :meth:`RatingSession.from_json` give the
string the module stores in the scene, so a saved and reloaded scene, or a reloaded module,
keeps the ratings.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from .errors import FeedbackError, InputError
from .imageio import Volume

SESSION_FORMAT = "scorerefine-session"
SESSION_VERSION = 1

#: events passed to observers
EVENT_CURRENT = "current"     # the current region changed
EVENT_RATING = "rating"       # a rating (score or over/under) changed
EVENT_ALL_RATED = "all-rated"  # next_unrated found no unrated region
EVENTS = (EVENT_CURRENT, EVENT_RATING, EVENT_ALL_RATED)

#: the quality predictor's model rater (``quality.suggestions.SUGGESTED``)
SUGGESTED_RATER = "suggested"
#: region orders: label order, or the predictor's most doubtful first
ORDERS = ("regions", "uncertainty")
#: "confidently good": P(score >= GOOD_MIN_SCORE) >= GOOD_P_MIN (as ``quality predict``)
GOOD_MIN_SCORE, GOOD_P_MIN = 4, 0.9

ERROR_LABELS = {"over": "over", "under": "under", "none": ""}

_FLIP = np.diag([-1.0, -1.0, 1.0])


@dataclass(frozen=True)
class Command:
    """A session command: ``name`` is a :class:`RatingSession` method, ``arg`` its argument."""

    name: str
    arg: Optional[int] = None


_KEYMAP = {
    **{str(s): Command("rate", s) for s in range(1, 6)},
    "o": Command("mark_over"),
    "u": Command("mark_under"),
    "n": Command("next_unrated"),
    " ": Command("next_unrated"),
    "space": Command("next_unrated"),
    "key_space": Command("next_unrated"),
    "a": Command("accept_suggestion"),
}

#: keys for the panel's help text
KEY_HELP = (("1-5", "score the current region (1 = wrong, 5 = correct)"),
            ("O", "over-segmented"),
            ("U", "under-segmented"),
            ("N / Space", "next unrated region"),
            ("A", "accept the suggested rating"))


def command_for_key(key: str) -> Optional[Command]:
    """The command for a key (its text, e.g. ``"3"``, ``"O"``, ``" "``, or a name such as ``"Space"``).

    Returns None for keys the session does not handle (the panel then lets Slicer have them).
    """
    if not isinstance(key, str) or not key:
        return None
    if key == " ":
        return _KEYMAP[" "]
    return _KEYMAP.get(key.strip().lower())


@dataclass(frozen=True)
class RegionRow:
    """One row of the panel's region table."""

    number: int              # 1-based row number
    region: int              # region label
    score: Optional[int]     # None when unrated
    error: str               # "over", "under" or "none" (pending marks included)
    rated: bool
    current: bool
    voxels: int
    suggestion: str = ""     # the predictor's suggestion, e.g. "3 under (confidence 0.62)"

    @property
    def cells(self) -> tuple[str, str, str, str]:
        """Texts for the columns Region, Score, Over/under, Rated."""
        pending = self.score is not None and self.score < 5 and self.error == "none"
        return (f"Region {self.region}", "" if self.score is None else str(self.score),
                "needs O/U" if pending else ERROR_LABELS.get(self.error, self.error),
                "yes" if self.rated else "")


def _feedback_module():
    from . import feedback
    return feedback


def _new_feedback(case_id: str, labels: list[int], region_info: Optional[dict]):
    fb = _feedback_module()
    return fb.CaseFeedback(case_id=case_id, region_labels=list(labels),
                           region_info=dict(region_info or {}), raters={})


Observer = Callable[[str, "RatingSession"], None]


class RatingSession:
    """One rater rating one case's regions. All panel state and decisions live here."""

    def __init__(self, case_id: str, regions: Volume, rater: str = "clinician", feedback=None,
                 region_info: Optional[dict] = None, current: Optional[int] = None,
                 clock: Callable[[], float] = time.monotonic, auto_advance: bool = False):
        if not rater or not str(rater).strip():
            raise InputError("the rater name is empty; type your name or initials in the Rate step.")
        labels = [int(v) for v in np.unique(regions.array) if v > 0]
        if not labels:
            raise InputError("the regions hold no region (all zero); run Split in step 2 first.")
        if feedback is not None and feedback.is_model(str(rater).strip()):
            raise InputError(f"the rater name '{str(rater).strip()}' is the quality predictor's (a "
                             f"model rater); type your own name or initials in the Rate step.")
        self.case_id = str(case_id)
        self.regions = regions
        self.rater = str(rater).strip()
        self.labels: list[int] = labels
        counts = np.bincount(regions.array[regions.array > 0].astype(np.int64))
        self.sizes = {k: int(counts[k]) for k in labels}
        self._centres: Optional[dict[int, tuple[int, int, int]]] = None
        if feedback is None:
            feedback = _new_feedback(self.case_id, labels, region_info)
        else:
            fb_labels = sorted(int(v) for v in feedback.region_labels)
            if fb_labels != labels:
                raise FeedbackError(
                    f"the feedback of case {feedback.case_id} was given for regions {fb_labels}, "
                    f"but the regions now hold {labels}; the regions were re-split after rating. "
                    f"Load the regions the feedback belongs to, or start a new rating.")
        self.feedback = feedback
        self.auto_advance = bool(auto_advance)
        self._clock = clock
        self._pending: dict[int, dict] = {}   # region -> {"score": s} and/or {"error": e}
        self._undo: list[tuple] = []
        self._observers: list[Observer] = []
        self._current = labels[0]
        if current is not None and int(current) in labels:
            self._current = int(current)
        self._entered = clock()
        #: "regions" (label order) or "uncertainty" (the predictor's most doubtful first)
        self.order = "regions"
        self.suggestion_rater = SUGGESTED_RATER
        #: what the last key or command did, in words (the panel shows it after every key)
        self.last_message = ""

    # ------------------------------------------------------------------ observers
    def add_observer(self, callback: Observer) -> Observer:
        """Call ``callback(event, session)`` after every change; returns it (for remove_observer)."""
        self._observers.append(callback)
        return callback

    def remove_observer(self, callback: Observer) -> None:
        if callback in self._observers:
            self._observers.remove(callback)

    def _notify(self, event: str) -> None:
        for cb in list(self._observers):
            cb(event, self)

    # ------------------------------------------------------------------ state
    @property
    def current(self) -> int:
        """The current region label."""
        return self._current

    @property
    def current_index(self) -> int:
        return self.labels.index(self._current)

    def rating(self, region: Optional[int] = None):
        """The rater's recorded :class:`~.feedback.Rating` of ``region`` (default: current), or None."""
        region = self._current if region is None else int(region)
        return self.feedback.raters.get(self.rater, {}).get(region)

    def _state(self, region: int) -> tuple[Optional[int], Optional[str]]:
        """(score, error) of a region: the recorded rating overlaid by pending input."""
        r = self.rating(region)
        p = self._pending.get(region, {})
        score = p["score"] if "score" in p else (None if r is None else int(r.score))
        error = p["error"] if "error" in p else (None if r is None else r.error)
        return score, error

    def score_of(self, region: Optional[int] = None) -> Optional[int]:
        """The region's score, recorded or still waiting for its over/under mark."""
        return self._state(self._current if region is None else int(region))[0]

    def error_of(self, region: Optional[int] = None) -> str:
        """The region's over/under mark ("over", "under"; "none" when there is none yet)."""
        return self._state(self._current if region is None else int(region))[1] or "none"

    def needs_error(self, region: Optional[int] = None) -> bool:
        """True when a score below 5 waits for O (over) or U (under) before it is recorded."""
        score, error = self._state(self._current if region is None else int(region))
        return score is not None and score < 5 and error not in ("over", "under")

    def is_rated(self, region: int) -> bool:
        return self.rating(region) is not None

    @property
    def n_rated(self) -> int:
        return sum(1 for k in self.labels if self.is_rated(k))

    @property
    def all_rated(self) -> bool:
        return self.n_rated == len(self.labels)

    def unrated(self) -> list[int]:
        return [k for k in self.labels if not self.is_rated(k)]

    def progress_text(self) -> str:
        return (f"Region {self._current} ({self.current_index + 1} of {len(self.labels)}); "
                f"{self.n_rated} of {len(self.labels)} rated")

    def rows(self) -> list[RegionRow]:
        out = []
        for i, k in enumerate(self.labels):
            out.append(RegionRow(number=i + 1, region=k, score=self.score_of(k), error=self.error_of(k),
                                 rated=self.is_rated(k), current=k == self._current,
                                 voxels=self.sizes[k], suggestion=self.suggestion_text(k)))
        return out

    def status_text(self) -> str:
        """One line for the panel: where we are and what the current region still needs."""
        text = self.progress_text()
        if self.needs_error():
            text += f". Region {self._current}: score {self.score_of()} needs O (over) or U (under)"
        elif self.score_of() is None and self.error_of() != "none":
            text += f". Region {self._current}: {self.error_of()}, now give a score 1-4"
        elif not self.is_rated(self._current) and self.suggestion_text():
            text += f". Suggested: {self.suggestion_text()}; press A to accept"
        note = self.confidence_note()
        return text + (f". {note}" if note else "")

    # ------------------------------------------------------------------ navigation
    def centre(self, region: Optional[int] = None) -> tuple[int, int, int]:
        """A voxel ``(z, y, x)`` inside the region, nearest its centroid (for centring views)."""
        if self._centres is None:
            from .regions import region_centres
            self._centres = region_centres(self.regions.array, self.regions.geometry.spacing_zyx)
        return self._centres[self._current if region is None else int(region)]

    def centre_ras(self, region: Optional[int] = None) -> tuple[float, float, float]:
        """The region centre in RAS millimetres (what Slicer's slice views take)."""
        return self.regions.geometry.index_to_ras(self.centre(region))

    def region_at_ras(self, ras) -> Optional[int]:
        """The region under a RAS point (a click in a slice view), None outside every region."""
        index = self.regions.geometry.ras_to_index(ras)
        if index is None:
            return None
        label = int(self.regions.array[index])
        return label if label in self.labels else None

    def bounds_ras(self, region: Optional[int] = None):
        """The region's bounding box in RAS mm, ((xmin, xmax), (ymin, ymax), (zmin, zmax)),
        to frame it in the views."""
        region = self._current if region is None else int(region)
        idx = np.argwhere(self.regions.array == region)
        g = self.regions.geometry
        corners = [g.index_to_ras(c) for c in
                   [(z, y, x) for z in (idx[:, 0].min(), idx[:, 0].max())
                    for y in (idx[:, 1].min(), idx[:, 1].max()) for x in (idx[:, 2].min(), idx[:, 2].max())]]
        arr = np.asarray(corners)
        return tuple((float(arr[:, a].min()), float(arr[:, a].max())) for a in range(3))

    def go_to(self, region: int) -> int:
        """Make ``region`` current (e.g. after a click on it in a slice view)."""
        region = int(region)
        if region not in self.labels:
            raise InputError(f"there is no region {region}; regions are {self.labels}.")
        if region != self._current:
            self._current = region
            self._entered = self._clock()
            self._notify(EVENT_CURRENT)
        return self._current

    def next(self) -> int:
        """The next region (wraps around)."""
        return self.go_to(self.labels[(self.current_index + 1) % len(self.labels)])

    def previous(self) -> int:
        return self.go_to(self.labels[(self.current_index - 1) % len(self.labels)])

    def next_unrated(self) -> Optional[int]:
        """The first unrated region after the current one (wrapping); None when all are rated.

        With ``order == "uncertainty"`` and suggestions present: the next region of
        :meth:`remaining_order` (the predictor's most doubtful unrated region first)."""
        if self.order == "uncertainty" and self.suggestions():
            todo = self.remaining_order()
            if todo:
                i = todo.index(self._current) if self._current in todo else -1
                return self._next_message(self.go_to((todo[i + 1:] + todo[:i + 1])[0]))
        n = len(self.labels)
        for step in range(1, n + 1):
            k = self.labels[(self.current_index + step) % n]
            if not self.is_rated(k):
                return self._next_message(self.go_to(k))
        self.last_message = f"All {len(self.labels)} regions are rated. Save the case."
        self._notify(EVENT_ALL_RATED)
        return None

    def _next_message(self, region: int) -> int:
        note = self.confidence_note()
        self.last_message = f"Region {region}: not rated yet." + (f" {note}." if note else "")
        return region

    # ------------------------------------------------------------------ rating
    def _snapshot(self, region: int) -> tuple:
        return (region, self.rating(region), dict(self._pending.get(region, {})), self._current)

    def _check_score(self, region: int, score) -> None:
        """Validate a score through feedback.py (its FeedbackError passes through unchanged)."""
        trial = type(self.feedback)(self.feedback.case_id, list(self.feedback.region_labels))
        ok = isinstance(score, int) and not isinstance(score, bool) and score < 5
        trial.rate(self.rater, region, score, "over" if ok else "none")

    def _apply(self, region: int, score: Optional[int], error: Optional[str]) -> None:
        """Record the rating when (score, error) is complete, else keep it pending."""
        complete = score is not None and ((score == 5 and error in (None, "none"))
                                          or (score < 5 and error in ("over", "under")))
        prev = self.rating(region)
        if complete:
            elapsed = max(0.0, self._clock() - self._entered)
            seconds = round(elapsed + (float(prev.seconds) if prev is not None else 0.0), 3)
            self.feedback.rate(self.rater, region, int(score), "none" if score == 5 else error,
                               seconds=seconds)
            self._pending.pop(region, None)
            self._entered = self._clock()
        else:
            if prev is not None:
                self.feedback.unrate(self.rater, region)
            pending = {}
            if score is not None:
                pending["score"] = int(score)
            if error in ("over", "under"):
                pending["error"] = error
            if pending:
                self._pending[region] = pending
            else:
                self._pending.pop(region, None)

    def rate(self, score: int) -> None:
        """Score the current region 1-5.

        5 (no visible error) is recorded at once; 1-4 is recorded with the region's over/under
        mark, or waits for O/U when there is none yet. Invalid scores raise feedback.py's
        :class:`~.errors.FeedbackError`.
        """
        region = self._current
        self._check_score(region, score)
        before = self._snapshot(region)
        _, error = self._state(region)
        error = "none" if score == 5 else error
        self._apply(region, int(score), error)
        self._undo.append(before)
        self._say(region)
        self._notify(EVENT_RATING)
        if self.auto_advance and self.is_rated(region):
            self._advance(region)

    def _mark(self, kind: str) -> None:
        region = self._current
        before = self._snapshot(region)
        score, error = self._state(region)
        if error == kind:      # pressing the same mark again never un-rates the region
            self._say(region)
            self._notify(EVENT_RATING)
            return
        if score == 5:
            score = None  # 5 means "no error": an over/under mark asks for a new, lower score
        self._apply(region, score, kind)
        self._undo.append(before)
        self._say(region)
        self._notify(EVENT_RATING)
        if self.auto_advance and self.is_rated(region):
            self._advance(region)

    def _say(self, region: int) -> None:
        score, error = self._state(region)
        if self.is_rated(region):
            r = self.rating(region)
            kind = "" if r.error == "none" else f" ({r.error}-segmented)"
            self.last_message = f"Region {region} rated {r.score}{kind}."
        elif score is not None:
            self.last_message = f"Region {region}: score {score}; now press O (over) or U (under)."
        elif error in ("over", "under"):
            self.last_message = f"Region {region}: {error}-segmented; now give a score 1-4."
        else:
            self.last_message = f"Region {region}: not rated."

    def _advance(self, region: int) -> None:
        said = self.last_message
        nxt = self.next_unrated()
        if nxt is not None:
            note = self.confidence_note()
            self.last_message = f"{said} Next: region {nxt}." + (f" {note}." if note else "")

    def mark_over(self) -> None:
        """The current region is over-segmented (mask too big); pressing again clears it."""
        self._mark("over")

    def mark_under(self) -> None:
        """The current region is under-segmented (mask too small); pressing again clears it."""
        self._mark("under")

    def clear(self) -> None:
        """Remove the rater's rating (and pending input) of the current region (undoable)."""
        region = self._current
        if self.rating(region) is None and region not in self._pending:
            return
        self._undo.append(self._snapshot(region))
        self._apply(region, None, None)
        self._notify(EVENT_RATING)

    @property
    def can_undo(self) -> bool:
        return bool(self._undo)

    def undo(self) -> bool:
        """Undo the last rating change; its region becomes current. False when nothing to undo."""
        if not self._undo:
            return False
        region, prev, pending, _current = self._undo.pop()
        if prev is None:
            self.feedback.unrate(self.rater, region)
        else:
            self.feedback.rate(self.rater, region, int(prev.score), prev.error,
                               seconds=float(prev.seconds), rated_at=prev.rated_at)
        if pending:
            self._pending[region] = dict(pending)
        else:
            self._pending.pop(region, None)
        if region != self._current:
            self._current = region
            self._entered = self._clock()
            self._notify(EVENT_CURRENT)
        self._notify(EVENT_RATING)
        return True

    # ------------------------------------------------------------------ suggestions (issue 11)
    def suggestions(self) -> dict:
        """``{region: QualityPrediction}`` of the predictor's suggestions in the feedback (with
        their probabilities); empty when the case has none."""
        from .quality.suggestions import suggestions_from_feedback
        preds = suggestions_from_feedback(self.feedback, self.suggestion_rater)
        return {r: p for r, p in preds.items() if r in self.sizes}

    def suggested_rating(self, region: Optional[int] = None):
        """The suggested :class:`~.feedback.Rating` of ``region`` (default: current), or None."""
        if not self.feedback.is_model(self.suggestion_rater):
            return None
        region = self._current if region is None else int(region)
        return self.feedback.raters.get(self.suggestion_rater, {}).get(region)

    def suggestion_text(self, region: Optional[int] = None) -> str:
        """E.g. ``"3 under (confidence 0.62)"``; ``""`` when the region has no suggestion."""
        region = self._current if region is None else int(region)
        s = self.suggested_rating(region)
        if s is None:
            return ""
        kind = "" if s.error == "none" else f" {s.error}"
        p = self.suggestions().get(region)
        return f"{s.score}{kind}" + ("" if p is None else f" (confidence {p.confidence:.2f})")

    def add_suggestions(self, preds: dict) -> int:
        """Put the predictor's ``{region: QualityPrediction}`` into the feedback as the model
        rater (replacing earlier suggestions; the person's ratings are untouched). Returns the
        number of suggestions."""
        from .quality.suggestions import add_suggestions
        if self.suggestion_rater == self.rater:
            raise InputError(f"the rater name '{self.rater}' is the quality predictor's; type your "
                             f"own name in the Rate step.")
        n = add_suggestions(self.feedback, preds, self.suggestion_rater)
        self.last_message = f"{n} suggested ratings. Press A to accept the current region's."
        self._notify(EVENT_RATING)
        return n

    def set_order(self, order: str) -> None:
        """``"regions"`` (label order) or ``"uncertainty"`` (most doubtful first: the most
        doubtful unrated region becomes current)."""
        if order not in ORDERS:
            raise InputError(f"unknown region order {order!r}; use one of {', '.join(ORDERS)}.")
        self.order = order
        todo = self.remaining_order()
        if order == "uncertainty" and todo and self.suggestions():
            self.go_to(todo[0])
        self._notify(EVENT_RATING)

    def remaining_order(self) -> list[int]:
        """The unrated regions in the order they will be offered: with ``order ==
        "uncertainty"``, those with a suggestion by decreasing entropy, then the rest by label."""
        from .quality.ranking import order_by_uncertainty
        unrated = self.unrated()
        preds = self.suggestions() if self.order == "uncertainty" else {}
        if not preds:
            return unrated
        first = order_by_uncertainty({r: preds[r] for r in unrated if r in preds})
        return first + [r for r in unrated if r not in preds]

    def remaining_confidently_good(self) -> bool:
        """True when there are unrated regions, every one has a suggestion, and each is
        confidently good (P(score >= 4) >= 0.9)."""
        from .quality.ranking import confidently_good
        unrated = self.unrated()
        preds = self.suggestions()
        return bool(unrated) and all(r in preds for r in unrated) and confidently_good(
            preds, unrated, GOOD_MIN_SCORE, GOOD_P_MIN)

    def confidence_note(self) -> str:
        """The sentence the panel shows when the remaining regions are confidently good."""
        if not self.remaining_confidently_good():
            return ""
        n = len(self.unrated())
        return (f"The remaining {n} region{'s are' if n > 1 else ' is'} confidently good "
                f"(P(score >= {GOOD_MIN_SCORE}) >= {GOOD_P_MIN:g} each): accept with A or save the case")

    def accept_suggestion(self) -> Optional[int]:
        """Record the suggestion of the current region as this person's rating (undoable).

        Never replaces a rating the person gave; returns the score recorded, or None."""
        region = self._current
        s = self.suggested_rating(region)
        if self.is_rated(region):
            r = self.rating(region)
            self.last_message = (f"Region {region}: your rating {r.score}"
                                 f"{'' if r.error == 'none' else ' ' + r.error} is kept; the "
                                 f"suggestion is not applied.")
            self._notify(EVENT_RATING)
            return None
        if s is None:
            self.last_message = (f"Region {region} has no suggestion; click Suggest (quality "
                                 f"predictor) first, or rate it with 1-5.")
            self._notify(EVENT_RATING)
            return None
        before = self._snapshot(region)
        self._pending.pop(region, None)
        self._apply(region, int(s.score), s.error)
        self._undo.append(before)
        self._say(region)
        self.last_message = self.last_message.replace("rated", "rated (suggestion accepted)", 1)
        self._notify(EVENT_RATING)
        if self.auto_advance and self.is_rated(region):
            self._advance(region)
        return int(s.score)

    # ------------------------------------------------------------------ commands and keys
    def execute(self, command: Command):
        """Run a :class:`Command` (from :func:`command_for_key` or a button)."""
        allowed = {"rate", "mark_over", "mark_under", "next", "previous", "next_unrated", "undo",
                   "clear", "go_to", "accept_suggestion"}
        if command.name not in allowed:
            raise InputError(f"unknown session command '{command.name}'")
        method = getattr(self, command.name)
        return method(command.arg) if command.arg is not None else method()

    def handle_key(self, key: str) -> bool:
        """Run the command of ``key``; False when the key is not one of the session's."""
        command = command_for_key(key)
        if command is None:
            self.last_message = (f"'{key}' is not a rating key: 1-5 score, O over, U under, "
                                 f"N or Space next unrated, A accept the suggestion.")
            return False
        self.execute(command)
        return True

    def rename_case(self, case_id: str) -> None:
        """Give the ratings another case ID (the panel's Case ID changed before Save case)."""
        case_id = str(case_id).strip()
        if not case_id or any(c in case_id for c in "/\\") or case_id.startswith("."):
            raise InputError(f"case ID {case_id!r} cannot be a folder name; use letters, digits, "
                             f"'_' or '-' (e.g. case_007).")
        self.case_id = case_id
        self.feedback.case_id = case_id

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict:
        return {"format": SESSION_FORMAT, "version": SESSION_VERSION, "case_id": self.case_id,
                "rater": self.rater, "current": self._current,
                "pending": {str(k): dict(v) for k, v in sorted(self._pending.items())},
                "auto_advance": self.auto_advance, "order": self.order,
                "feedback": self.feedback.to_dict()}

    def to_json(self) -> str:
        """The string the module stores in the scene (node attribute)."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str, regions: Volume, clock: Callable[[], float] = time.monotonic
                  ) -> "RatingSession":
        """A session back from :meth:`to_json` (regions: the label map it was rated on)."""
        try:
            d = json.loads(text)
        except (TypeError, ValueError) as exc:
            raise FeedbackError(f"the rating session stored in the scene is not valid JSON ({exc}); "
                                f"reload the ratings from the case folder's feedback.json.") from exc
        if not isinstance(d, dict) or d.get("format") != SESSION_FORMAT:
            raise FeedbackError("the text stored in the scene is not a SCORERefine rating session.")
        if int(d.get("version", 0)) > SESSION_VERSION:
            raise FeedbackError(f"the rating session in the scene has version {d.get('version')}, "
                                f"newer than this SCORERefine ({SESSION_VERSION}); update the extension.")
        fb = _feedback_module().CaseFeedback.from_dict(d["feedback"])
        session = cls(d.get("case_id", fb.case_id), regions, rater=d.get("rater", "clinician"),
                      feedback=fb, current=d.get("current"), clock=clock,
                      auto_advance=bool(d.get("auto_advance", False)))
        if d.get("order") in ORDERS:
            session.order = d["order"]
        pending = d.get("pending") or {}
        if not isinstance(pending, dict):
            raise FeedbackError("the rating session in the scene has a broken 'pending' entry.")
        for k, v in pending.items():
            if not (str(k).isdigit() and int(k) in session.labels and isinstance(v, dict)):
                continue
            p = {}
            if isinstance(v.get("score"), int) and 1 <= v["score"] <= 5:
                p["score"] = int(v["score"])
            if v.get("error") in ("over", "under"):
                p["error"] = v["error"]
            if p:
                session._pending[int(k)] = p
        return session

    def save_to_case(self, case_folder: str | os.PathLike) -> Path:
        """Write (merge) ``feedback.json`` into the case folder; returns its path."""
        from .case import FEEDBACK
        path = Path(case_folder) / FEEDBACK
        _feedback_module().save_feedback(self.feedback, path)
        return path

    @classmethod
    def from_case(cls, case, rater: str = "clinician", clock: Callable[[], float] = time.monotonic
                  ) -> "RatingSession":
        """A session for a :class:`~.case.Case` (its regions, and its feedback.json if present)."""
        regions = case.load_regions()
        feedback = None
        if case.has_feedback:
            feedback = _feedback_module().load_feedback(case.feedback_path)
        session = cls(case.case_id, regions, rater=rater, feedback=feedback, clock=clock)
        unrated = session.unrated()
        if unrated and unrated[0] != session.current:
            session._current = unrated[0]
        return session


def next_case_to_rate(dataset: str | os.PathLike, rater: str, after: Optional[str] = None):
    """The next case (sorted by id, after ``after``, wrapping) that the rater has not fully rated.

    A case counts as rated by ``rater`` when its feedback.json holds a rating of every region by
    that rater. Returns a :class:`~.case.Case` or None when every case is rated.
    """
    from .case import list_cases
    cases = list_cases(dataset)
    ids = [c.case_id for c in cases]
    start = ids.index(after) + 1 if after in ids else 0
    order = cases[start:] + cases[:start]
    fbmod = _feedback_module()
    for case in order:
        if case.case_id == after:
            continue
        if not case.has_feedback:
            return case
        try:
            fb = fbmod.load_feedback(case.feedback_path)
        except FeedbackError:
            return case  # a corrupt feedback file: show the case so the rater sees the error
        rated = {r.region for r in fb.ratings(rater)}
        if not set(int(v) for v in fb.region_labels) <= rated:
            return case
    return None
