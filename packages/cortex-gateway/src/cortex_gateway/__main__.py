"""``python -m cortex_gateway``: the same as the ``cortex`` command."""

from cortex_gateway.cli import main

if __name__ == "__main__":
    main()
