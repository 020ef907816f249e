"""Loihi 2 fixed-point arithmetic: the quantizer and the one integer neuron step (``dynamics``)."""
