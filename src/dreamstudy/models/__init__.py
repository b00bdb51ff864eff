"""Stable Diffusion 1.x models: loading by hub id or folder, and the offline tiny random-init model."""
