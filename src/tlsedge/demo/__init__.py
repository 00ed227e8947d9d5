"""The ``tlsedge demo``: a local CA, two sites, two small origins and an edge, started with one command.

Why it exists: a new user should see HTTPS termination, SNI routing, the http→https redirect and strict origin TLS work
on their own machine in seconds, with ``curl`` lines they can paste, before writing any configuration of their own.
``origin.py`` is the echo server standing in for a real application; ``run.py`` wires everything together.
"""
