"""SIP over a byte stream, sans-IO: framing (`framing`) and cheap header peeks (`peek`)."""
