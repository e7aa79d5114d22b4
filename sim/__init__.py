"""The deterministic simulator (`python -m sim`) arrives with the coordinator lease."""
