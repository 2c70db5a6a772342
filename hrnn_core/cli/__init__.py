"""The ``hrnn`` command line; nothing in the product imports it."""
