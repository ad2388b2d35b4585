"""Decisions on validation: the quality gate, the one chooser, champion vs challenger."""
