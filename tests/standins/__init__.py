"""Local stand-ins for the ticketing vendors' REST APIs: real HTTP servers on loopback.

Each vendor module answers with bodies shaped like the vendor's public API documentation
(the page is named beside each route) and checks every request the way the vendor would:
method, path, authentication, and the parameters and body fields the docs require. A request
the vendor would refuse gets the vendor's documented error *and* is recorded in
``violations``, so a client that drops a required parameter fails its test.
"""
