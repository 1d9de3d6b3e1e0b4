"""Everything that learns or fits: datasets, augmentation, training, cross-validation, calibration,
adaptation, the fitted checks and the exports that measure themselves."""
