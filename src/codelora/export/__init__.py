"""`codelora export`: a run as GGUF files for llama.cpp and Ollama, checked in llama.cpp itself.

converters.py runs llama.cpp's own converter scripts, quantize.py its quantizer (in a child
process), modelfile.py writes Ollama's Modelfile from the model's chat template, parity.py
compares the files' logits and greedy answers with the PyTorch model, gguf_export.py puts the
steps together. merge.py is `codelora merge` (an adapter folded into its base, written as a
full model); it gates on the same parity verdict.
"""
