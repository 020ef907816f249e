"""One process recording the binary spikes of many layers, bit-packed."""
from hardware.runtime.procs.spike_recorder.models import PySpikeRecorderModel
from hardware.runtime.procs.spike_recorder.process import MAX_LAYERS, WORD_BITS, SpikeRecorder, unpack

__all__ = ["SpikeRecorder", "PySpikeRecorderModel", "MAX_LAYERS", "WORD_BITS", "unpack"]
