"""trimta: a multi-tenant mail transfer agent on trio."""

__version__ = "0.1.0"
