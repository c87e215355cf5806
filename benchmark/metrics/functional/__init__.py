"""Pure tensor implementations of every metric (no registry, no state)."""
