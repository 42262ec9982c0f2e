"""The fused CPU kernel: a small C++ extension, built on first use and cached per torch version.

Why C++ and not one of the others:

- ``torch.compile`` (inductor) also needs a C++ compiler at run time, adds seconds of compilation
  per new shape (every batch size, every image size) and recompiles after each torch upgrade in
  every process; its generated loops for an online softmax feeding a GEMM do not keep a row tile
  in cache across heads.
- A pure-torch blocked formulation is what the current path already is (blocks of inputs and heads
  that fit in cache, see ``CACHE_BLOCK_ELEMENTS``): every operation is still a separate pass over
  the block, about ten of them, so that is the cost left to remove.
- This kernel (``cpu_kernel.py``, about 300 lines of C++) takes a tile of query rows of one input, computes
  each head's scores and value Gram matrix with the library's own GEMM into buffers that stay in
  cache (:data:`TILE_FLOATS`), and makes one loop over each row for everything else (softmax, distances,
  rule, row sum, division, head mean); the fused matrix is written once. It is built once per
  torch version, Python version and CPU (its vector width), by torch's own extension tools, into
  torch's extension cache (``TORCH_EXTENSIONS_DIR``, by default ``~/.cache/torch_extensions``);
  later processes load the cached library in milliseconds.

Without a compiler (or where the build fails), :func:`extension` returns None after one line on
the ``captum_tokenlrp`` logger and the current path runs: no install ever needs a compiler.
``CAPTUM_TOKENLRP_FUSED_CPU=0`` turns the kernel off.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import re
import shutil
import threading

import torch

from ..distances import NEAR_PAIR_SHARE
from .cpu_kernel import SOURCE

logger = logging.getLogger("captum_tokenlrp")

#: Floats of the three row-tile buffers (probabilities, contributions, fused rows) of a task: 2 MB, in
#: the last-level cache. Measured on DINO ViT-S/8 shapes (785 tokens): smaller tiles (512 KB, L2-sized)
#: cost more in the GEMMs, which re-pack the keys and values for every tile, than they save in the row
#: loops; one tile of every row (785 rows, 7 MB) costs more again.
TILE_FLOATS = 2**19
#: The environment switch: "0" turns the kernel off.
SWITCH = "CAPTUM_TOKENLRP_FUSED_CPU"

_lock = threading.Lock()
_state: dict[str, object] = {}


def _cpu_flags() -> str:
    """The vector extensions of this CPU that the build targets (``-march=native``)."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("flags"):
                    wanted = ("avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_bf16", "amx_tile")
                    flags = set(line.split(":", 1)[1].split())
                    return ",".join(flag for flag in wanted if flag in flags)
    except OSError:
        pass
    return platform.machine()


def _module_name() -> str:
    """One name per kernel source, torch version and CPU: a build never serves another."""
    source = SOURCE.encode()
    key = hashlib.sha256(source + torch.__version__.encode() + _cpu_flags().encode()).hexdigest()[:12]
    version = re.sub(r"[^0-9A-Za-z]", "_", torch.__version__)
    return f"captum_tokenlrp_fused_cpu_{version}_{key}"


def _compiler() -> str | None:
    return shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++") or shutil.which("clang++")


def extension():
    """The built kernel module, or None (said once per process) where it cannot be had."""
    with _lock:
        if "module" in _state:
            return _state["module"]
        module, reason = None, None
        if os.environ.get(SWITCH, "1") == "0":
            reason = f"{SWITCH}=0"
        elif _compiler() is None:
            reason = "no C++ compiler found (set CXX, or install g++)"
        else:
            try:
                from torch.utils.cpp_extension import load_inline

                flags = ["-O3", "-fno-math-errno", "-fopenmp-simd"]
                link = []
                if platform.machine() in ("x86_64", "AMD64", "aarch64", "arm64"):
                    flags.append("-march=native")
                if torch.backends.openmp.is_available() and platform.system() == "Linux":
                    # at::parallel_for is OpenMP in these builds; the process already holds torch's libgomp.
                    flags.append("-fopenmp")
                    link.append("-fopenmp")
                logger.info("captum_tokenlrp: building the fused CPU kernel (once per torch version, ~1 min).")
                module = load_inline(
                    name=_module_name(),
                    cpp_sources=[SOURCE],
                    functions=["fused_rule_layer"],
                    extra_cflags=flags,
                    extra_ldflags=link,
                    verbose=False,
                )
            except Exception as error:  # a broken toolchain must not break an explanation
                reason = f"the build failed ({type(error).__name__}: {str(error).splitlines()[0][:200]})"
        if module is None:
            logger.warning("captum_tokenlrp: fused CPU kernel off, %s; the unfused path runs.", reason)
        _state["module"] = module
        return module


def tile_rows(num_tokens: int, batch: int = 1) -> int:
    """Query rows per task: the three `(rows, N)` buffers within :data:`TILE_FLOATS`, and enough tasks
    (two per thread) that a small batch still keeps every thread busy."""
    rows = max(1, min(num_tokens, TILE_FLOATS // (3 * num_tokens)))
    tiles_wanted = -(-2 * torch.get_num_threads() // batch)
    return max(1, min(rows, -(-num_tokens // tiles_wanted)))


def launch(query, key, value, centred, norms, bias, *, by_distance: bool, by_deviation: bool, mode: int):
    """``(output, matrix)`` from the built kernel; float32 contiguous inputs, ``query`` already scaled."""
    module = extension()
    if module is None:
        raise RuntimeError("The fused CPU kernel is not available (see the captum_tokenlrp log).")
    empty = query.new_empty(0)
    return module.fused_rule_layer(
        query,
        key,
        value,
        empty if centred is None else centred,
        empty if norms is None else norms,
        empty if bias is None else bias,
        by_distance,
        by_deviation,
        mode,
        tile_rows(query.shape[2], query.shape[0]),
        NEAR_PAIR_SHARE,
    )
