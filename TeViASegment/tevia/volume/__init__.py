"""Volume I/O, geometry, intensity preprocessing and mask post-processing for the slice pipeline.

Frames used throughout: numpy arrays are indexed K, J, I (slice, row, column, as
``SimpleITK.GetArrayFromImage`` and Slicer's ``arrayFromVolume`` give them); ITK images are
indexed I, J, K with physical points in LPS; Slicer and the worker protocol use RAS.
"""
