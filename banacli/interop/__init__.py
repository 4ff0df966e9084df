"""Interoperability with annotation tools and dataset formats (COCO, VOC, YOLO, Label Studio).

``masks``: codecs (Label Studio brush RLE, COCO RLE, polygons), pure numpy functions.
``labelstudio``: Label Studio result dicts from masks and boxes.
"""
