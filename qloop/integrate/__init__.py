"""Adapters that drive a qloop AioContext from another event loop."""
