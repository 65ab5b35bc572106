"""Running a checkpoint on new videos and images: the predictor, video/image I/O, CSV output.

May import ``model.nets``, ``model.engine.checkpoint``, ``model.evaluation`` and ``pipeline``
(face landmarks, alignment); never the commands.
"""
