"""wsol: weakly supervised object localization toolkit.

Data flows one way: ``data`` -> ``models`` -> ``cams`` -> ``localize`` -> ``metrics`` -> ``report``.
Each stage is usable on its own from Python; ``wsol.cli`` puts them behind one command.
"""

__version__ = "0.1.0"
