"""onegen: build the One-Gen dataset (sources -> annotators -> shards) for OneDiffusion."""

__version__ = "0.1.0"
