"""Data: TFDS builders for the face-mask datasets, safe decoding, leak-aware grouping, input pipeline."""
