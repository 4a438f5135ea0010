"""The decoding runtime: answers token by token for evaluation, `ask`, the server and the export's check.

batcher.py is the continuous batcher (one KV-cache row per sequence, kv_cache.py; the next token
from sampling.py; text and stop strings from text_stream.py); generate.py answers a list of
questions through it (or transformers' `generate` for encoder-decoders); gguf_model.py runs a GGUF
file in llama.cpp with the batcher's per-sequence steps.
"""
