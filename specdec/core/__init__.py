"""Decoding: settings and validation, sampling and verification, the runner and its KV cache, the
speculation loops, adaptive K, statistics, detokenization, model loading. torch only, never grpc."""
