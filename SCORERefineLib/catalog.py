"""Names and labels of every extension point, without importing torch.

This is what the command line's choices, the background training job, the Slicer panel's combo
boxes (filled in ``setup()``) and the benchmark read. The implementations live in registries next
to the code (``refiner/modes/``, the region splitters); each registers under a name listed here,
and a test checks that the two agree.

Adding a training mode: one file in ``refiner/modes/`` plus one :class:`Entry` line in
:data:`TRAINING_MODES`. Adding a region method: one splitter plus one line in
:data:`REGION_METHODS`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Entry:
    """One registered name: ``label`` (what a person sees), ``description`` (one sentence),
    ``requires`` (case files it reads beyond image/initial, e.g. ``("feedback",)``)."""

    name: str
    label: str
    description: str
    requires: tuple[str, ...] = ()


def _index(*entries: Entry) -> dict[str, Entry]:
    return {e.name: e for e in entries}


#: training modes (implementations: ``SCORERefineLib.refiner.modes``)
TRAINING_MODES: dict[str, Entry] = _index(
    Entry("score", "SCORE (region ratings)",
          "learns from the 1-5 region ratings and over/under labels in feedback.json only",
          ("regions", "feedback")),
    Entry("full", "Full supervision (dense reference)",
          "learns from reference.nii.gz: the fully supervised upper bound", ("reference",)),
    Entry("scribble", "Scribbles (strokes)",
          "learns from foreground/background strokes in scribbles.nii.gz (partial CE + EMA-teacher "
          "pseudo-labels)", ("scribbles",)),
    Entry("hybrid", "Hybrid (few dense + many weak)",
          "a few cases with reference.nii.gz plus many rated or scribbled ones, weak cases weighted "
          "by the instance indicator", ("reference",)),
)

#: hybrid mode: the weak cases' feedback (``refiner.modes.hybrid.WEAK_KINDS``; ``--weak``)
HYBRID_WEAK_KINDS: dict[str, Entry] = _index(
    Entry("score", "Region ratings", "weak cases learn from their 1-5 region ratings (feedback.json)",
          ("regions", "feedback")),
    Entry("scribble", "Scribbles", "weak cases learn from their strokes (scribbles.nii.gz)",
          ("scribbles",)),
)

#: hybrid mode: how weak cases are weighted (``refiner.modes.hybrid.INDICATORS``; ``--indicator``)
HYBRID_INDICATORS: dict[str, Entry] = _index(
    Entry("dynamic", "Dynamic instance indicator", "each weak case weighted by how well its "
          "gradient agrees with the dense cases' (recomputed every N steps)"),
    Entry("fixed", "Fixed weights (ablation)", "every weak case weighs 1"),
)

#: the appearance veto's thick-layer rule: its evidence threshold by default (LLR units;
#: ``refiner.veto.VetoLimits.thick_layer_llr``, ``--veto-thick-llr``; None = off). On since
#: stop 34 (at 0.9), with the SCORE loss defaults that learn weighted removals; 0.8 since stop 36,
#: after a third unseen bone's peel at mean evidence +0.86 (docs/score-loss.md, stops 35-36)
DEFAULT_THICK_LAYER_LLR = 0.8

#: the add threshold a trained model refines at by default, by training mode
#: (``refiner.decision.decide_change``; ``refine --add-threshold``): a voxel outside the initial
#: mask is added where the network's probability is at least this (removals keep the plain
#: threshold, 0.5). SCORE's targets keep most of the initial mask, so its right additions'
#: probabilities fall short of 0.5: adding from 0.4 gained more on every development preset at
#: both seeds without a case made worse (docs/score-loss.md, stop 39). Modes not listed add at
#: the plain threshold.
ADD_THRESHOLDS: dict[str, float] = {"score": 0.4}


def add_threshold_for(mode: str | None) -> float | None:
    """The default add threshold of a model trained in ``mode``; None: the plain threshold (a
    mode not in :data:`ADD_THRESHOLDS`, or unknown)."""
    value = ADD_THRESHOLDS.get(str(mode or ""))
    return None if value is None else float(value)


#: score mode: named loss-weight settings (``refiner.losses.ScoreLossWeights.PROFILES`` plus
#: the defaults; ``--loss-weights NAME``)
SCORE_PROFILES: dict[str, Entry] = _index(
    Entry("default", "Default",
          "removals only where rated 1-2 and weighted as additions, additions only where rated "
          "1-3, thin parts (ribs) with the broad removal rule: on abdominal organs it learns to "
          "remove leaks and made no case worse where the broad setting did"),
    Entry("broad", "Broad (before stop 34)",
          "flips in every rated error region, removals weighted a quarter of the additions: more "
          "gain on structures the refiner never trained on, but on organs with large errors it "
          "never removes and grows the initial leaks"),
)

#: region splitters (implementations: ``SCORERefineLib.regions``)
REGION_METHODS: dict[str, Entry] = _index(
    Entry("patches", "Surface patches", "compact patches of the boundary band (k-means in mm)"),
    Entry("slabs", "Slabs along the long axis", "slabs of the boundary band along each component's "
          "principal axis"),
)

#: refiners that ``scorerefine refine --model`` accepts besides a checkpoint path
BUILTIN_REFINERS: dict[str, Entry] = _index(
    Entry("classical", "Classical post-processing", "closing, hole filling, largest component"),
    Entry("identity", "No change", "returns the initial mask (a baseline)"),
)


def names(registry: dict[str, Entry]) -> list[str]:
    """The registered names in catalog order."""
    return list(registry)


def labels(registry: dict[str, Entry]) -> list[tuple[str, str]]:
    """``(name, label)`` pairs in catalog order, for combo boxes."""
    return [(e.name, e.label) for e in registry.values()]
