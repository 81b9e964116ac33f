"""Tests of the node daemon: unit tests and component tests of the real process against a kubelet stub."""
