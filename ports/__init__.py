"""Readers and converters of foreign weight files. Nothing here imports torch or TensorFlow, and no reader
executes code from a file: pickles are read with restricted unpicklers (see ``ports.pickles``)."""
