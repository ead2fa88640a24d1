"""Inference: the Predictor (model -> mask at the original size), test-time augmentation and
post-processing."""
