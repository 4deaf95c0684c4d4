"""Channel experts meta-learned with FOMAML (stage 03): model, inference, stage, predictor."""
