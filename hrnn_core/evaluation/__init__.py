"""Evaluation layer: protocols, metrics, baselines, the HRNN-meta harness scorer, the leaderboard harness."""
