"""Analyses of sources, models and results: bias-score figures, correlations, tables."""
