"""The mini track: small CPU-trainable implementations of the slowrun variants (see docs/mini-track.md)."""
