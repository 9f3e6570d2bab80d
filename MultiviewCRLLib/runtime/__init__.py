"""What runs a trained model, in the Slicer module and in the trainer alike: preprocessing,
networks, the model bundle and the analysis of one pair.

Imports only torch, monai, nibabel and what 3D Slicer ships (numpy, scipy, SimpleITK), and never
``MultiviewCRLLib.training``: a Slicer holding only what the module installs must run all of it.
"""
