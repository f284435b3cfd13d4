"""The normalisation every image gets before the network: ImageNet's mean and standard deviation.

The recipe of torchvision's, timm's and smp's ImageNet weights (and mmsegmentation's
``img_norm_cfg`` divided by 255). One place for both numbers, importable without torch, so a
process that only records a run's tags (a sweep trial driving a TorchTrainer) need not load the
data pipeline.
"""

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
