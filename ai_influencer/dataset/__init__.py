"""Dataset layout, manifest, captions, augmentation and contact sheets."""
