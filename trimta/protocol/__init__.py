"""Sans-IO SMTP: grammar, replies, server and client state machines.

Bytes in, events out; events in, bytes out. No I/O and no clock here: this package
imports nothing but the standard library.
"""
