"""Entry points that produce the project's measured results (``python -m experiments.NAME``)."""
