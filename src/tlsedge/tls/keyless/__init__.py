"""Keyless TLS 1.3: the edge terminates TLS while the certificate's private key stays with the site owner.

The sans-IO server engine (``engine``) makes every handshake step itself except the CertificateVerify signature,
which it asks for as an event; a key server at the origin makes it. ``records`` is the engine's record layer and
``tickets`` its stateless session tickets (resumption needs no key server).
"""
