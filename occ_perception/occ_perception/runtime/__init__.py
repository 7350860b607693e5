"""Inference backends with one interface (:class:`~occ_perception.runtime.base.Backend`).

- :mod:`.torch_backend`: the reference, CPU or CUDA.
- :mod:`.ort_backend`: onnxruntime (CPU by default; CUDA and TensorRT providers where present).
- :mod:`.trt_backend`: TensorRT 10/11 engines (GPU only; imported lazily).
"""
