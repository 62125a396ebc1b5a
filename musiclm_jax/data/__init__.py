"""Data: TFDS builders (synthetic corpus, MusicCaps, audio folders) and tokenizer training."""
