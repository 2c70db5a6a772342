"""Baselines with the same scoring interface as HRNN-meta (``hrnn_core.evaluation.baselines.base.Scorer``).

Popularity (all-time and recent), BPR matrix factorization, a factorization machine; the plain
GRU ablation is HRNN-meta with its extra inputs and metadata turned off.
"""
