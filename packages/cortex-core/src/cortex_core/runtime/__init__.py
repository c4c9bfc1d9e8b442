"""What both daemons run on, as opposed to what they say to each other.

The rest of ``cortex_core`` is the contracts: wire structs, ids, the catalogue,
configuration. This family is the daemons' shared runtime, kept apart so a
contract never depends on it:

- ``serving``: hypercorn as both daemons run it (its settings, one repair)
- ``loops``: the event loop (uvloop where it is installed)
- ``sockets``: listening sockets bound before a server starts
- ``logs``: structured logging, one line per event, text or JSON
"""
