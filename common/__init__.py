"""Plumbing every treadle package shares: atomic files and locks, CLI entry and one-line
errors, logging set-up, host set-up before jax starts. Imports no other treadle package."""
