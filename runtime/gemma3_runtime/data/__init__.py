"""Data: mock tokens, Megatron indexed datasets, SFT JSONL (loss masks, packing), the bundled synthetic task."""
