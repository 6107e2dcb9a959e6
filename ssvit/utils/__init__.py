"""Bottom-layer helpers that models, objectives and the engine all use (imports only torch)."""
