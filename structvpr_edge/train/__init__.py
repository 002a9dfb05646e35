"""Training (torch): data, samplers, losses, sample weights, the two-stage trainer."""
