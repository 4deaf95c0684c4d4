"""Masked-autoencoder pre-training (stage 02): the model, its input builder and the stage."""
