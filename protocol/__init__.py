"""pyiscsid protocol core: sans-IO, bytes and time in, events and bytes out."""
