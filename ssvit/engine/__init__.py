"""Training engine: distributed set-up, optimisation utilities, checkpoints, metrics, the loop."""
