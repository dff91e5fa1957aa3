"""Closed-form vector-Jacobian products of the attention norms (LayerNorm, Llama's RMSNorm).

The scoring engine maps a q/k/v projection's output gradient back to the residual stream through
the norm in closed form instead of by autograd (:mod:`analysis.adapter`, :mod:`analysis.qkv_heads`).
"""

from __future__ import annotations

import torch
from torch import nn

from analysis.errors import UserError

Tensor = torch.Tensor


def norm_kind(norm: nn.Module) -> str | None:
    """'layernorm' (nn.LayerNorm), 'rmsnorm' (Llama's: weight and variance_epsilon), or None: a norm
    with no closed-form VJP here (the registry's :attr:`analysis.architectures.Architecture.norm`)."""
    if isinstance(norm, nn.LayerNorm):
        return "layernorm"
    if hasattr(norm, "variance_epsilon") and hasattr(norm, "weight"):  # LlamaRMSNorm
        return "rmsnorm"
    return None


def norm_vjp(norm: nn.Module, x: Tensor, v: Tensor) -> Tensor:
    """Closed-form J_norm(x)^T v for a LayerNorm or an RMSNorm (Llama) module."""
    kind = norm_kind(norm)
    if kind == "layernorm":
        return layernorm_vjp(norm, x, v)
    if kind == "rmsnorm":
        return rmsnorm_vjp(norm, x, v)
    raise UserError(f"no closed-form VJP for the norm module {type(norm).__name__}")


def rmsnorm_vjp(norm: nn.Module, x: Tensor, v: Tensor) -> Tensor:
    """Closed-form J_RMS(x)^T v for v of shape (..., B, P, D) broadcast against x (B, P, D).

    RMS(x) = w * xhat, xhat = x / sqrt(mean(x^2) + eps) = x * r:
    J^T v = r * (u - xhat * mean(u * xhat)) with u = w * v.
    """
    r = torch.rsqrt((x * x).mean(-1, keepdim=True) + norm.variance_epsilon)
    xhat = x * r
    u = v * norm.weight.to(v.dtype)
    return (u - xhat * (u * xhat).mean(-1, keepdim=True)) * r


def layernorm_vjp(ln: nn.LayerNorm, x: Tensor, v: Tensor) -> Tensor:
    """Closed-form J_LN(x)^T v for v of shape (..., B, P, D) broadcast against x (B, P, D).

    LN(x) = gamma * xhat + beta, xhat = (x - mean) / sqrt(var + eps) (biased var):
    J^T v = (u - mean(u) - xhat * mean(u * xhat)) / sigma with u = gamma * v.
    """
    mu = x.mean(-1, keepdim=True)
    xc = x - mu
    var = (xc * xc).mean(-1, keepdim=True)
    rstd = torch.rsqrt(var + ln.eps)
    xhat = xc * rstd
    u = v * ln.weight.to(v.dtype) if ln.weight is not None else v
    return (u - u.mean(-1, keepdim=True) - xhat * (u * xhat).mean(-1, keepdim=True)) * rstd
