"""Novel-view synthesis evaluation (OneDiffusion Table 2): image metrics and the GSO-30 renders."""
