"""Encoders: the protocol and factory, the torch and OpenVINO backends, the window cutter,
precision, the embedded run's process pool. The only place torch or openvino are imported."""
