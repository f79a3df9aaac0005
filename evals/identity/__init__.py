"""ID customisation evaluation (OneDiffusion Table 3): Unsplash-50 faces (MTCNN + ArcFace, CLIP-T) and world identities."""
