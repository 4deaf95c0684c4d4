"""The competition's data: file-name rules, the .mat reader, synthetic data, folds,
montage, where the data lives (and its download), and the submission file format."""
