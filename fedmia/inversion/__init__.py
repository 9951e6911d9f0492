"""Reconstruction attacks (gradient inversion on client updates, model inversion on models) and
their metrics, Flower-free."""
