"""The Optuna ensemble (stage 06): the blend estimator, its study storage and the stage."""
