"""``python -m neuron``: the same as the ``neuron`` command."""

from neuron.cli import main

if __name__ == "__main__":
    # vLLM starts engine processes with `spawn`, which re-imports this module:
    # the guard keeps those children from running the CLI again.
    main()
