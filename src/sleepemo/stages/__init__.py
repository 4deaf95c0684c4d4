"""The stages' own logic, one module per script ``src/NN_<name>.py``.

Each module has ``run(stage) -> StageOutput`` (the body the stage runner calls, see
:mod:`sleepemo.stage`) and, when it writes fingerprinted results,
``fingerprints(stage, planned) -> [Planned]``: the fingerprints ``run`` would give them
now, computed by the same functions without running anything (:mod:`sleepemo.plan`). A stage module uses the library (data, features, models, lopo,
artefacts, report, ...) and **never imports another stage's module**: what one stage
needs from another it reads from disk, through :mod:`sleepemo.artefacts` (predictions)
or the loaders beside the models (e.g. :func:`sleepemo.models.mae.load_mae_weights` for
stage 02's encoder). ``tests/test_layout.py`` checks this.
"""
