"""analysis: why one backbone localizes better than another.

- :mod:`wsol.analysis.erf`: the effective receptive field (ERF) as RepLKNet's authors measure it, and its
  high-contribution area ratios.
- :mod:`wsol.analysis.features`: what the CAM feature map F holds on a WSOL split (the share of the class
  evidence inside the GT, PC1's explained variance and its agreement with the CAM, activation histograms
  inside and outside the GT, how many channels carry the CAM).

Nothing is imported here, so that the command line (:mod:`wsol.analysis.cli`) starts without torch.
"""
