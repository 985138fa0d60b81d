"""Model training: fit, calibrate, measure on a holdout, and save a bundle the cascade loads."""
