"""Test-only stand-in for detectron2 so slowfast==1.0 imports without it."""
