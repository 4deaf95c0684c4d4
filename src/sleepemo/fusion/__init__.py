"""Spatiotemporal fusion (stage 04): model, input builder, stage, predictor."""
