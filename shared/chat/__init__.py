"""One chat turn, end to end, independent of HTTP and Ray Serve: the gateway's logic.

- ``prompt``: what the model sees: user text with special tokens neutralised, retrieved passages
  as a clearly marked data block.
- ``memory``: conversation history in Redis with a TTL.
- ``turn``: ``run_turn``: retrieval, generation, the tool-call loop, as a stream of events.
"""
