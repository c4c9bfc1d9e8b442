"""neuron: the per-host daemon running vLLM engines for cortex."""

__version__ = "0.1.0"
