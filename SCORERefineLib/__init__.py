"""SCORERefineLib: the SCORERefine engine (no Qt; only the ``mrml`` package imports ``slicer``).

SCORE = Segmentation COrrection from Regional Evaluations: a mask is split into regions, a rater
scores each region 1-5 and says whether it is over- or under-segmented, and a refiner network is
trained from those ratings alone.
"""

__version__ = "0.1.0"
