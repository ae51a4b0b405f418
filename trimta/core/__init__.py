"""Pure domain logic: messages, queue names, site names, limits, log records.

Imports only `trimta.protocol` and the standard library; time enters as an argument.
"""
