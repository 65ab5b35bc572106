"""Running a checkpoint on new videos and images.

``predictor`` (frames -> table), ``tracking`` (best face / every face with stable ids),
``pose`` (head pose, fit confidence), ``postprocess`` (calibration, smoothing), ``backends``
(PyTorch / onnxruntime), ``onnx_export``, ``batch`` (inputs, parallel jobs, resume, summary),
``csv_format`` (the CSV's columns; OpenFace 2.2's format and the plain one), ``output`` (CSV +
sidecar, plots, overlay), ``video_io``, ``api`` (the Python API).

May import ``model.nets``, ``model.engine.checkpoint``, ``model.evaluation`` and ``pipeline``
(face landmarks, alignment); never the commands.
"""
