"""The ``airlock`` command line: the parser in ``main``, one module per subcommand group.

Each group module has ``register(subparsers)`` and owns its subcommands; each subcommand is
one small function that calls the library.
"""
