"""SIP over WebSocket (RFC 7118), sans-IO: the server side of the HTTP/1.1 Upgrade and the
WebSocket framing (wsproto), each WebSocket message one SIP message."""
