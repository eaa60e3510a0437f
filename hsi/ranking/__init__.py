"""Spuriousness rankings (paper 004): detector scores ranked within each class, subsets of the
ranking, last-layer retraining on them, noise sensitivity, OOD accuracy and ranked image grids.

The paper's convention, used everywhere here: **rank 0 = the highest detector score = the most
clearly visible object = the least spurious image**; ``bot``-k = ranks 0..k-1 (lowest
spuriousness rank, highest score), ``top``-k = the k highest ranks (most spurious).
"""
