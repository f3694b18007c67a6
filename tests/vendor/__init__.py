"""Tests of the vendor SDK: its client, its worker loop and `aifi worker`."""
