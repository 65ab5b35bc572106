"""Measuring tools, apart from the commands that train and predict.

* ``train_bench``    speed and size of TRA-Net against its SENet-50 backbone (``python -m model.bench``)
* ``predict_bench``  ``model.predict`` end to end, PyTorch against onnxruntime
                     (``python -m model.predict_bench``)
* ``synthetic``      the inputs they share with the tests: a face video, an untrained checkpoint
* ``gpu_report/``    the GPU path stage by stage on a lent machine (``python -m model.gpu_report``)

The ``python -m`` names above are thin entry points in ``model/``; the code is here.
"""
