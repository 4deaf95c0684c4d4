"""The stage runner and what every stage shares: the artefacts contract, the fold
executor, the run lock, the stage-00 folds body and the run's report."""
