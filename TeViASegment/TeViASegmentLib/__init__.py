"""The Slicer side of TeViA without Qt: scene <-> arrays, the worker client, segmentation jobs,
settings, models, installer and the training-set export. Imports no torch."""
