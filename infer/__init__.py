"""Inference: load a trained run's parameters and generate text (library API and CLI)."""
