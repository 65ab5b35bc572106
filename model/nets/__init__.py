"""The networks: SENet-50, SE/CBAM, the decoder, TRA-Net and its variants, the input transform.

May import torch and numpy only: nothing here reads files or imports the pipeline, the engine or
h5py/OpenCV, so a network can be built anywhere (a notebook, an ONNX export, a GPU box).
"""
