"""tlsedge: a self-hostable edge network."""
