"""``wsol tune``: hyperparameter search on the val split (train-fullsup), the protocol's way.

- :mod:`wsol.tune.space`: search-space files (dotted config keys -> distributions), checked against the recipe;
- :mod:`wsol.tune.pruning`: the Lightning callback that reports each epoch's val metric and prunes;
- :mod:`wsol.tune.study`: the Optuna study (storage, resume, worker processes, trials, the final run);
- :mod:`wsol.tune.outputs`: ``trials.csv``, ``trials.png``, ``best.yaml``.
"""

from wsol.tune.space import SearchSpace, load_space, override

__all__ = ["SearchSpace", "load_space", "override"]
