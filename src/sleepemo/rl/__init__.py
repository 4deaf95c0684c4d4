"""Stage 05's reinforcement-learning heads and their supervised twins.

- :mod:`sleepemo.rl.features`: the trial features after RLEEGNet (per-participant signals,
  label-free; CSP fitted inside one LOPO fold only);
- :mod:`sleepemo.rl.env`: the gymnasium environment that presents one training trial per
  step (the action is the class, the reward 1 if right);
- :mod:`sleepemo.rl.heads`: the DQN head (after RLEEGNet) and its supervised twin;
- :mod:`sleepemo.rl.sac`: the SAC head (after EEGDancer) over VQ emotion prototypes, its
  trajectory environment and its GRU twin.
"""
