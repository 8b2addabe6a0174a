"""SlowFast Feature Extractor: clip-level features from PySlowFast models."""

__version__ = "0.1.0"
