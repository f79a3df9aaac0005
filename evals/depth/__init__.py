"""Monocular depth benchmarks (NYUv2, DIODE): ground-truth readers, the alignment protocol and metrics."""
