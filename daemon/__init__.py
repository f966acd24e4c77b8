"""pyiscsid daemon: the asyncio runtime around the protocol core."""
