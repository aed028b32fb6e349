"""iVideoGPT world model as a library: tokenizer, transformer, KV-cached decoding, checkpoints."""
