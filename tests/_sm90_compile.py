"""Compile the richest variant of each quantized-matmul kernel to an sm_90 cubin, without a GPU.

Run without ``TRITON_INTERPRET`` (``test_triton_quant.test_kernels_compile_for_sm90`` does): the variants
are the gated experts split-K GEMV in bf16 with gate and up of two types, the float32 GEMM with bias and the
gated split-K reduce. Exits non-zero with the compiler's error when one fails.
"""

from __future__ import annotations

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from oxide.kernels import quant_matmul
from oxide.quant import GGMLType

TARGET = GPUTarget("cuda", 90, 32)


def compile_for_sm90(kernel, pointers: dict[str, str], constants: dict, num_warps: int) -> None:
    """``pointers``: the pointer arguments' types; every other argument not in ``constants`` is an int32."""
    signature = {name: "constexpr" if name in constants else pointers.get(name, "i32") for name in kernel.arg_names}
    triton.compile(ASTSource(fn=kernel, signature=signature, constexprs=constants), target=TARGET,
                   options={"num_warps": num_warps})


def main() -> None:
    types = dict(QTYPE=int(GGMLType.Q6_K), QTYPE_UP=int(GGMLType.Q4_K), ACT=2)
    compile_for_sm90(quant_matmul._gemv_kernel,
                     {"x_ptr": "*bf16", "w_ptr": "*u8", "w_up_ptr": "*u8", "offsets_ptr": "*i64", "out_ptr": "*bf16",
                      "part_ptr": "*fp32"},
                     dict(types, BLOCK_M=8, BLOCK_N=quant_matmul.GEMV_BLOCK_N, BLOCK_K=quant_matmul.GEMV_BLOCK_K,
                          GATED=True, EXPERTS=True, HAS_BIAS=False, SPLIT=4, bias_ptr=None),
                     quant_matmul.GEMV_WARPS)
    compile_for_sm90(quant_matmul._gemm_kernel,
                     {"x_ptr": "*fp32", "w_ptr": "*u8", "bias_ptr": "*fp32", "out_ptr": "*fp32"},
                     dict(types, BLOCK_M=64, BLOCK_N=quant_matmul.GEMM_BLOCK_N, BLOCK_K=quant_matmul.GEMM_BLOCK_K,
                          GATED=False, EXPERTS=False, HAS_BIAS=True, w_up_ptr=None, offsets_ptr=None),
                     quant_matmul.GEMM_WARPS)
    compile_for_sm90(quant_matmul._reduce_kernel, {"part_ptr": "*fp32", "out_ptr": "*fp16"},
                     dict(SPLIT=4, GATED=True, HAS_BIAS=False, ACT=1, BLOCK_N=quant_matmul.REDUCE_BLOCK_N,
                          bias_ptr=None),
                     4)


if __name__ == "__main__":
    main()
