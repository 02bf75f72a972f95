"""The learned region-quality predictor (issue 11): suggested scores, doubtful regions first,
ratings it can fill in. See docs/quality-predictor.md.

Modules: ``network`` (QualityNet), ``corruptions`` (synthetic region corruptions with a known
score), ``data`` (fixed-size crops around a region), ``train`` (``train_quality``, checkpoints
with ``task: "quality"``), ``predict`` (per-region probabilities, uncertainty order, fill-in),
``suggestions`` (the ``suggested`` model rater in feedback.json), ``evaluate``.
"""
