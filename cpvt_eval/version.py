"""The version of cpvt-eval, in a module of its own: any part of the package reads it without importing the
package root (which imports the probes)."""

__version__ = "0.2.0"
