"""Hooks for scripts/schemathesis (loaded through SCHEMATHESIS_HOOKS).

The WHEP operations take text bodies under their own media types (`application/sdp` for an
offer, `application/trickle-ice-sdpfrag` for a trickle PATCH), which schemathesis has no
serializer for: it would report every such operation as "Serialization not possible" and test
none of it. Both are text, so they are sent as `text/plain` bodies are (UTF-8), under the
media type the document declares.
"""

import schemathesis

schemathesis.serializer.alias(
    ["application/sdp", "application/trickle-ice-sdpfrag"], "text/plain"
)
