"""The export stage: each export is checked against PyTorch before it is kept.

    onnx         float32 ONNX with the dermaseg metadata (export_onnx)
    parity       the check against PyTorch; export_onnx_checked
    int8         static INT8 (ONNX Runtime, QDQ), its comparison with float32; export_int8
    tflite       float TFLite via litert-torch (optional extra); export_tflite_checked
    calibration  the images the checks and the INT8 calibration run on
    folder       a model folder for sharing (safetensors, metadata, card); export_folder
    card         its model card (README.md with the front matter model hubs read)

Importing this package imports nothing: PyTorch comes with the modules that need it.
"""
