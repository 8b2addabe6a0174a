"""Test-only stand-in for torchvision: pytorchvideo's model code imports `torchvision.ops.RoIAlign`."""
