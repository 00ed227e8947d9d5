"""Sub-commands of the ``tlsedge`` CLI that have grown beyond a few lines, one module per command group.

Each module has ``register(commands)`` adding its parsers to the CLI's sub-parser set (``cli.build_parser`` calls it).
"""
