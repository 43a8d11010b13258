"""Training: `tevia train` (train.py), the Lightning module, augmentation, EMA, click training and the data sets (data/)."""
