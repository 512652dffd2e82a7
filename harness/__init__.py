"""slowrun-harness: seeds, statistics and a CI gate for LM-training leaderboards."""

__version__ = "0.1.0"
