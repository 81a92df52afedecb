"""Triton kernels, installed as ``oxide.kernels``.

Each op keeps the signature of its reference in :mod:`oxide.ops.reference`, which is also its
specification; :mod:`oxide.ops.triton_kernels` registers them with the dispatcher and imports a module
only when an op is first bound, so ``import oxide`` imports no Triton.

- ``quant_dequant``: GGML blocks (twelve types) to float32 tiles in registers, read as the file stores them.
- ``quant_matmul`` and ``quant_ops``: the quantized GEMV (split-K for small matrices) and GEMM (``tl.dot``),
  with the gated MLP's activation fused and stacked experts as a grid dimension.
- ``rope``: half-split and adjacent pairs, partial rotation.
- ``attention``: flash-attention prefill and split-KV decode over the cache, GQA heads packed.
- ``sampling``: llama.cpp's sampler chain and the draw without sorting the vocabulary.
"""
