"""Receptive fields and exact tiling: how far context reaches, measured and analytic."""
