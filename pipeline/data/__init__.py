"""Data: the packed uint8 image store and its sources, the block loader, and per-sample augmentation on the
device (crops, flips, MoCo v2 colours, the evaluation view)."""
