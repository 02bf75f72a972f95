"""The refiner: network inputs, network, SCORE loss, training modes, trainer, checkpoints.

Import submodules directly (``from SCORERefineLib.refiner.checkpoint import load_refiner``); this
package imports nothing heavy on its own.
"""
