"""Decode media and turn it into perceptual fingerprints."""
