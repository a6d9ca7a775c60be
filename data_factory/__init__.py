"""Data factory: internal-state capture, frame encoding, run generation, labelling and storage.

Imports nothing from ``core_models``, ``tevid_hpo`` or ``experiments``.
"""
