"""Compare our features with released ones: `python -m pipeline.compare OURS THEIRS` (see `cli`).

Modules, one job each: `released` reads their files, `ours` ours, `align` finds the temporal alignment
from the data, `scaling` checks normalisations, `measure` gathers one video's numbers, `diagnose` turns
them into findings and a verdict, `report` writes text or JSON, `plot` the optional PNG.
"""
