"""The stylistic classifier: dual-branch ViT + ALADIN-style model, head training, calibration, checkpoints, scoring."""
