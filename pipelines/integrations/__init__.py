"""The ticketing loop's vendor side: signed webhooks in, routing written back.

Each vendor module turns a verified webhook body into ``WebhookEvent`` values and writes a
routing decision back through the vendor's documented REST API (``Writer``). What to write is
analysts' YAML (``mapping.RoutingMap``); the note an agent reads is ``note.routing_note``.
The queue, worker and correction logic that use them sit above (``serving.intake``).
"""
