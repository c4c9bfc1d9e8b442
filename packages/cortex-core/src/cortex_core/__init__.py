"""cortex-core: the contracts shared by the cortex gateway and its neurons."""

__version__ = "0.1.0"
