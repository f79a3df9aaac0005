"""Benchmarks, one self-contained unit per name, and the leaderboard (the evaluation issues)."""
