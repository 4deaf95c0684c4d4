"""sleepemo: decoding emotional memory reactivation from sleep EEG.

Solution package for the Kaggle competition "Predicting Emotions During Sleep Using
Brain Waves". The stage scripts ``src/NN_*.py`` are thin wrappers around this package.
"""

__version__ = "0.1.0"

#: Channel order of the competition files (10-20 names, contralateral mastoid reference).
CHANNELS = ("C3", "C4", "O1", "O2", "CP3", "F3", "F4", "CP4",
            "C5", "Cz", "C6", "CP5", "P7", "Pz", "P8", "CP6")
SFREQ = 200.0
N_TIMES = 200
COMPETITION_SLUG = "predicting-emotions-using-brain-waves"
