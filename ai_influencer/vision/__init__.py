"""Vision: robust image decoding, face engines, background removal, sharpness, dedupe."""
