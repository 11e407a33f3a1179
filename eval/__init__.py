"""Sparsity metrics, perplexity, lm-eval tasks and the leaderboard."""
