"""Conditional generation evaluation (UniCon Table 1): FID and condition fidelity by re-annotation."""
