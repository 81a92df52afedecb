"""Triton kernels, installed as ``oxide.kernels``.

Each kernel keeps the signature of its reference op in :mod:`oxide.ops.reference` and registers
itself with :mod:`oxide.ops.dispatch`; none is imported by ``import oxide``.
"""
