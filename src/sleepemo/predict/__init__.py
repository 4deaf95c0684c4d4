"""Applying a finished run to new recordings (``sleepemo predict``).

The base classes (:mod:`sleepemo.predict.base`) sit below the model families, whose
predictors build on them; the loader, the ensemble, streaming and the CLI sit above them."""
