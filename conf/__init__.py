"""Hydra configs of `python -m pipeline.extract`, installed as the package `pipeline.conf` (see pyproject)."""
