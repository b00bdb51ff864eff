"""Few-shot personalization of Stable Diffusion on DreamBench, and augmentation against overfitting."""
