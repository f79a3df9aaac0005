"""Camera-pose estimation evaluation: RayDiffusion's relative-rotation and camera-centre accuracies."""
