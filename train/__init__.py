"""Training: config split, mesh, optimizer, state, jitted steps, checkpoints, the loop and CLI."""
