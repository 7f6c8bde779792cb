"""Data: sources, tokenizers, Grain pipelines."""
