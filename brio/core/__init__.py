"""Sans-io protocol cores: pure state machines, no I/O, no clocks, no trio or asyncio.

Time and messages come in as arguments; decisions go out as return values. The node and the
simulator drive the very same objects.
"""
