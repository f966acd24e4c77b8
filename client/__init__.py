"""pyiscsiadm: the command-line client."""
