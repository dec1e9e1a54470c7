"""Benchmarks: the machine's roofline, the model's FLOPs, isolated contender runs and the report.

Used by ``napari-ddunet bench`` (:mod:`napari_ddunet.commands.bench`); see docs/benchmarks.md.
"""
