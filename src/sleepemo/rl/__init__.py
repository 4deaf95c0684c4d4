"""Stage 05's reinforcement-learning heads and their supervised twins.

- :mod:`sleepemo.rl.features`: the trial features after RLEEGNet (per-participant signals,
  label-free; CSP fitted inside one LOPO fold only);
- :mod:`sleepemo.rl.env`: the gymnasium environment that presents one training trial per
  step (the action is the class, the reward 1 if right);
- :mod:`sleepemo.rl.training`: what both heads' fold training shares (inner split, the
  learning curves and the SB3 callback recording them);
- :mod:`sleepemo.rl.heads`: the DQN head (after RLEEGNet), its supervised twin and one
  LOPO fold of both;
- :mod:`sleepemo.rl.prototypes`: the SAC's VQ emotion prototypes (label-free; trained,
  kept and loaded);
- :mod:`sleepemo.rl.inputs`: the SAC's input builder (tokens -> embeddings -> code
  vectors), shared by the stage and the predictor, and the stage's source of tokens;
- :mod:`sleepemo.rl.sac`: the SAC head (after EEGDancer), its trajectory environment, its
  GRU twin and one LOPO fold of both;
- :mod:`sleepemo.rl.stage`: stage 05's body (fold state, fingerprints, orchestration,
  report); :mod:`sleepemo.rl.predict`: the heads applied to new recordings.
"""
