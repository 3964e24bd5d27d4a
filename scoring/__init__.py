"""Evaluation metrics shared by the serving side (consumer/: evaluate, replay, calibration) and the training side
(models/): one implementation, scikit-learn's. Imports numpy and scikit-learn only (never torch, models/ or
consumer/), so both sides may import it."""
