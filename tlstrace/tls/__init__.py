"""TLS: contexts per domain, certificates, ClientHello sniffing, the memory-BIO engine, key log."""
