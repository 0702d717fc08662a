"""The image: the live graph, attaching, the commit protocol, recovery and transactions."""
