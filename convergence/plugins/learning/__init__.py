"""Learning systems of the agent society: RLP (reasoning rewarded by information gain)."""
