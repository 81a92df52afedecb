"""Compile the attention kernel's variants to sm_90 cubins, without a GPU (run without ``TRITON_INTERPRET``;
``test_attention_segments.test_kernel_compiles_for_sm90`` does): causal with a window and a soft-cap (a decoder's
split-KV decode), and non-causal with segments (a vision encoder's prefill), in bf16. Exits non-zero with the
compiler's error when one fails.
"""

from __future__ import annotations

from oxide.kernels import attention
from _sm90_compile import compile_for_sm90

POINTERS = {"q_ptr": "*bf16", "k_ptr": "*bf16", "v_ptr": "*bf16", "q_pos_ptr": "*i64", "k_pos_ptr": "*i64",
            "q_seg_ptr": "*i64", "k_seg_ptr": "*i64", "lse_ptr": "*fp32"}


def main() -> None:
    tiles = dict(G=4, HD=128, BLOCK_D=128)
    compile_for_sm90(attention._attention_kernel, {**POINTERS, "out_ptr": "*fp32", "scale": "fp32",
                                                   "softcap": "fp32"},
                     dict(tiles, SOFTCAP=True, WINDOW=True, CAUSAL=True, SEGMENTS=False, SPLIT=True, BLOCK_M=16,
                          BLOCK_N=64), num_warps=4)
    compile_for_sm90(attention._attention_kernel, {**POINTERS, "out_ptr": "*bf16", "scale": "fp32",
                                                   "softcap": "fp32"},
                     dict(tiles, SOFTCAP=False, WINDOW=False, CAUSAL=False, SEGMENTS=True, SPLIT=False, BLOCK_M=64,
                          BLOCK_N=64), num_warps=4)


if __name__ == "__main__":
    main()
