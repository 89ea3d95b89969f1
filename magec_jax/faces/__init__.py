"""Faces in photographs: detection and landmarks (``detect``), alignment (``align``) and paste-back (``paste``)."""
