"""Shared attention kernels: one dispatch per operation, a plain-torch reference beside each fast path."""
from mtp.kernels.attention import attention, attention_reference

__all__ = ["attention", "attention_reference"]
