"""tevid-hpo."""
