"""Pixtral's vision encoder: images of any size (multiples of the patch) to one feature per patch.

As transformers' ``PixtralVisionModel``: each image (C, H, W) is cut into p x p patches, row by row, and a
convolution of stride p (here a matmul over the unfolded patches) embeds each; the patches of every image are
packed into one sequence, normed (``ln_pre``, RMSNorm), and run through pre-norm transformer layers
(``x += o(attn(norm(x)))``, ``x += down(act(gate(norm(x))) * up(norm(x)))``) whose attention is non-causal and
block-diagonal: a patch attends to the patches of its own image only. Positions are 2-D: the RoPE angles of a
patch at (row, col) are ``row * f[0::2]`` on the first quarter of each head's dims and ``col * f[1::2]`` on the
second (``f = theta^(-2i / hd)``), rotated in half-split pairs (transformers' ``PixtralVisionRotaryEmbedding``).

Every computation goes through :mod:`oxide.ops`, so the kernels of the device run it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ... import ops
from ...ops.bound import LayerOps
from .config import NORM_EPS, VisionConfig
from .weights import VisionLayerWeights, VisionWeights


def unfold_patches(image: torch.Tensor, patch: int) -> torch.Tensor:
    """(C, H, W) with H, W multiples of ``patch`` -> (rows * cols, C * patch * patch), patches row by row, each
    flattened as (C, p, p): the layout of a flattened (D, C, p, p) convolution kernel."""
    C, H, W = image.shape
    grid = image.reshape(C, H // patch, patch, W // patch, patch)              # (C, rows, p, cols, p)
    return grid.permute(1, 3, 0, 2, 4).reshape((H // patch) * (W // patch), C * patch * patch)


def patch_positions(grids: Sequence[tuple[int, int]], device: torch.device
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(rows, cols, image) index of every patch of the packed sequence, each (P,) int64."""
    rows, cols, images = [], [], []
    for index, (r, c) in enumerate(grids):
        rows.append(torch.arange(r, device=device).repeat_interleave(c))
        cols.append(torch.arange(c, device=device).repeat(r))
        images.append(torch.full((r * c,), index, dtype=torch.long, device=device))
    return torch.cat(rows), torch.cat(cols), torch.cat(images)


class VisionLayer:
    """One pre-norm layer: non-causal attention within each image, then the gated MLP."""

    def __init__(self, config: VisionConfig, w: VisionLayerWeights, kernels: LayerOps, device: torch.device,
                 dtype: torch.dtype) -> None:
        self.w, self.ops = w, kernels
        self.qkv = ops.LinearGroup((w.q, w.k, w.v), (None, None, None), device, dtype)
        self.o = ops.Linear(w.o, None, device, dtype)
        self.gate_up = ops.GatedLinear(w.gate, w.up, config.hidden_act, device, dtype)
        self.down = ops.Linear(w.down, None, device, dtype)
        self.heads, self.hd = config.num_attention_heads, config.head_dim

    def __call__(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, index: torch.Tensor,
                 image: torch.Tensor) -> torch.Tensor:
        _, P, D = x.shape
        q, k, v = self.qkv(self.ops.rms_norm(x, self.w.attention_norm, NORM_EPS))
        q = self.ops.rope(q.view(1, P, self.heads, self.hd).transpose(1, 2), cos, sin)     # (1, H, P, hd)
        k = self.ops.rope(k.view(1, P, self.heads, self.hd).transpose(1, 2), cos, sin)     # (1, H, P, hd)
        v = v.view(1, P, self.heads, self.hd).transpose(1, 2)                              # (1, H, P, hd)
        out = self.ops.attention(q, k, v, index, index, scale=self.hd ** -0.5, causal=False, q_seg=image,
                                 k_seg=image)                                              # (1, H, P, hd)
        x, normed = self.ops.add_rms_norm(self.o(out.transpose(1, 2).reshape(1, P, D)), x, self.w.ffn_norm,
                                          NORM_EPS)
        return self.ops.add(x, self.down(self.gate_up(normed)))                           # (1, P, D)


class PixtralEncoder:
    """``encoder(images) -> (P, D * len(feature_layers))``: the hidden states that ``vision_feature_layer``
    selects (index 0: the normed patch embeddings; i: after layer i; negative from the end), concatenated."""

    def __init__(self, config: VisionConfig, weights: VisionWeights, device: torch.device, dtype: torch.dtype) -> None:
        self.config, self.weights, self.device, self.dtype = config, weights, device, dtype
        self.ops = LayerOps.bind(device, dtype)
        self.patch = ops.Linear(weights.patch, None, device, dtype)
        self.layers = [VisionLayer(config, w, self.ops, device, dtype) for w in weights.layers]
        n = config.num_hidden_layers
        self.feature_layers = [layer % (n + 1) for layer in config.feature_layers]   # in 0..n
        hd = config.head_dim
        inv_freq = 1.0 / config.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd)   # (hd/2,)
        self.row_freq, self.col_freq = inv_freq[0::2].to(device), inv_freq[1::2].to(device)      # (hd/4,) each

    def rope_tables(self, rows: torch.Tensor, cols: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin (P, hd/2): the row angles on the first hd/4 pairs, the column angles on the rest."""
        cos_r, sin_r = self.ops.rope_cos_sin(rows, self.row_freq)                          # (P, hd/4) each
        cos_c, sin_c = self.ops.rope_cos_sin(cols, self.col_freq)
        return torch.cat((cos_r, cos_c), dim=-1), torch.cat((sin_r, sin_c), dim=-1)

    @torch.inference_mode()
    def __call__(self, images: Sequence[torch.Tensor]) -> torch.Tensor:
        """Features of ``images`` (each (C, H, W) on the device, H and W multiples of the patch), packed in
        order: (sum of rows * cols, D * len(feature_layers))."""
        p = self.config.patch_size
        grids = [(image.shape[1] // p, image.shape[2] // p) for image in images]
        patches = torch.cat([unfold_patches(image.to(self.dtype), p) for image in images])   # (P, C p p)
        x = self.ops.rms_norm(self.patch(patches)[None], self.weights.ln_pre, NORM_EPS)      # (1, P, D)
        rows, cols, image = patch_positions(grids, self.device)
        cos, sin = self.rope_tables(rows, cols)
        index = torch.arange(x.shape[1], device=self.device)   # attention's positions (unused: not causal)
        states = [x]
        for layer in self.layers[:max(self.feature_layers)]:
            states.append(layer(states[-1], cos, sin, index, image))
        return torch.cat([states[i] for i in self.feature_layers], dim=-1)[0]
