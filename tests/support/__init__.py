"""Helpers the tests share: real peers and the national path on one machine."""
