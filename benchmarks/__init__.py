"""The benchmark: every model against the teacher and outside peers, chosen on validation,
reported on test."""
