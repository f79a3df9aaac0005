"""WebDataset shards of One-Gen samples: an atomic, resumable writer and a streaming reader."""
