"""The version of tokend, in a module of its own: every part may name it without importing the package's
public names."""

__version__ = "0.1.0"
