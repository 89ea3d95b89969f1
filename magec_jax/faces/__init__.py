"""Faces in photographs: detection and landmarks (``detect``), alignment (``align``) and paste-back (``paste``).

The detector is BlazeFace followed by MediaPipe FaceMesh (Flax ports in :mod:`magec_jax.models.blazeface`
and :mod:`magec_jax.models.facemesh`); their converted weights ship with the package in ``weights/``, so
``detect.FaceDetector.load()`` needs nothing from the network.
"""
