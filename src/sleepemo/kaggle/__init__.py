"""Kaggle: stage 07 (the submission), submitting a run, and the offline kernel bundle."""
