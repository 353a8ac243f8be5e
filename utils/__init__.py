"""Utility layer of FASL: evaluation metrics, losses, visualisation and run helpers.

Modules (import them directly; this package imports nothing heavy on its own):

- ``utils.metrics``   image / pixel AUROC, F1-max, AP and AUPRO; result tables and files
- ``utils.losses``    focal and dice losses for the ASL head
- ``utils.visualize`` heat-map overlays, mask outlines, triptychs, PNG writing
- ``utils.misc``      device resolution, seeding, atomic saves, logging, peak memory, JSON

Nothing in ``utils`` imports ``models`` or ``data``.
"""
