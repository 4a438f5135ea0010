"""llama.cpp's quantizer (`llama_model_quantize`), run in a child process: a native crash then
becomes an error message instead of ending codelora, and llama.cpp's log stays out of the way.

    python -m codelora.export.quantize SRC.gguf DST.gguf q8_0|q4_k_m THREADS
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from codelora.export.converters import ExportError

# llama.cpp's file types (llama_ftype in llama.h); q4_k_m keeps some tensors at higher precision
FTYPES = {"q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0", "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M"}


def quantize(src: Path, dst: Path, quant: str, threads: int) -> Path:
    r = subprocess.run([sys.executable, "-m", "codelora.export.quantize", str(src), str(dst), quant, str(threads)],
                       capture_output=True, text=True)
    if r.returncode != 0 or not dst.is_file():
        tail = [ln for ln in r.stderr.splitlines() if ln.strip()][-1:] or [f"exit status {r.returncode}"]
        raise ExportError(f"llama.cpp could not quantize {src.name} to {quant}: {tail[0]}")
    return dst


def _main(src: str, dst: str, quant: str, threads: str) -> int:
    import ctypes

    import llama_cpp

    llama_cpp.llama_backend_init()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, FTYPES[quant])
    params.nthread = int(threads)
    rc = llama_cpp.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(params))
    if rc != 0:
        print(f"llama_model_quantize returned {rc}", file=sys.stderr)
    return 0 if rc == 0 else 1


if __name__ == "__main__":
    sys.exit(_main(*sys.argv[1:]))
