"""Interoperability: bana's outputs in other tools' formats, and other tools' files in bana's.

``model_export``: trained models as ONNX / TorchScript / safetensors (``bana export``).
``authors_checkpoints``: the BANA authors' PyTorch checkpoints to bana's artifacts (``bana convert``).
``label_export``: pseudo labels as datasets (COCO, VOC, YOLO, Label Studio; ``bana export-labels``).
``masks``: codecs (Label Studio brush RLE, COCO RLE, polygons), pure numpy functions.
``labelstudio``: Label Studio result dicts from masks and boxes.
"""
