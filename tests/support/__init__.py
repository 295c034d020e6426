"""Helpers shared by the test suite: ports, certificates, processes, SIP traffic."""
