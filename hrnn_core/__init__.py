"""hrnn_core: HRNN-meta (Ma et al., KDD 2020) as a batch recommendation workflow."""

__version__ = "0.1.0"
