"""Third-party checkpoints into our networks: reading them without unpickling code
(:mod:`.checkpoints`), key maps and strict loading for each release — DeepLabV3+ from VainF and
NVIDIA/SML (:mod:`.deeplab`), ESPNetv2 from EdgeNets (:mod:`.edgenets`), MobileNetV2's ImageNet
weights from TF-slim (:mod:`.tf_mobilenet`). Every error names the file and the first bad keys.
"""
