"""squeeze: compress a trained network into a small, fast, verified model (docs/architecture.md)."""
