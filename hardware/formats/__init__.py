"""File formats: Lava-DL netx HDF5 (``netx``, the writer and the names to import; its layout in
``netx_layout``, its checked reader in ``netx_read``), the Neuromorphic Intermediate
Representation (``nir``), and ``files``: the atomic writer and bounded reads every file uses."""
