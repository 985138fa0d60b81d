"""The ``cca`` command line."""
