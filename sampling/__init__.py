"""tunemv.sampling: prediction algebra, guidance, samplers and their registry (arrives with issue 6)."""
