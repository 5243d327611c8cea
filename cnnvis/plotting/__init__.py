"""Figures. Every function returns a matplotlib ``Figure``; stages save them.

One file per topic (attribution, synthesis, activations, similarity,
importance, encdec, perturb, training). This package is a leaf: only stages
import it.
"""

import matplotlib

matplotlib.use("Agg")  # figures are files; never open a window
