"""The model the build starts from: a timm ViT (pretrained, random or a checkpoint) or the offline
default trained here on the digits data set, and the image sets it is calibrated and checked on."""
