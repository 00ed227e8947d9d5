"""The key server: the program a site owner runs next to the origin so the private key never leaves their machine.

Edges connect over mutual TLS and ask it to sign TLS 1.3 CertificateVerify inputs (protocol: `tlsedge.tls.keyless.wire`,
docs/keyless-protocol.md). It signs only what a TLS 1.3 server handshake needs, only for the configured names and
edges, at a bounded rate, and logs every operation (docs/keyserver.md).
"""
