"""Kaggle: stage 07 (the submission), submitting a run or a file, the offline kernel bundle,
and the pushed kernel's status and output."""
