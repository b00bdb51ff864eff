"""DreamBench evaluation: CLIP/DINO encoders, similarity scores, per-image scores and their means."""
