"""Models that read internal-state videos: DYNAMICS-MAE, TEViD, the EDL head, metrics and baselines."""
