"""Test helpers: synthetic scenes with known truth, and the image-set conformance tests.

:mod:`stardist_host.testing.conformance` holds :class:`ImageSetConformance`, the
host contract as a pytest class that a host adapter subclasses; it imports
pytest, so it is imported from there, not here.
"""
