"""Instance segmentation from boxes (BANA's Table 2 / Mask R-CNN extension):

- :mod:`~banacli.instances.pseudo_masks`: instance pseudo masks (COCO result lists) from the label PNGs;
- :mod:`~banacli.instances.maskrcnn`: Mask R-CNN with the region mask loss, its targets,
  loading, prediction and export;
- :mod:`~banacli.instances.coco_ap`: instance AP (pycocotools COCOeval, segm) against ground truth.

The box -> instance mask rule itself is tensor math in :mod:`banacli.ops.instances` (shared
with the dataset label export).
"""
