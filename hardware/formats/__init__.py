"""File formats: Lava-DL netx HDF5 (``netx``) and the Neuromorphic Intermediate Representation (``nir``)."""
